// `{{name}}`: upper-cases the payload and appends a mark (config `mark`,
// default "!"); keeps the key and adds a `handled-by` header. An empty
// payload is `fatal`: it will never succeed, so the policy dead-letters it.
package main

import "sluice.dev/guest/sluice"

var mark = []byte("!")

func init() {
	sluice.Init = func(config [][2]string) error {
		for _, kv := range config {
			if kv[0] == "mark" {
				mark = []byte(kv[1])
			}
		}
		return nil
	}
	sluice.Handle = func(msg sluice.Message) ([]sluice.Output, *sluice.HandlerError) {
		if len(msg.Payload) == 0 {
			return nil, sluice.Fatal("empty payload")
		}
		payload := make([]byte, 0, len(msg.Payload)+len(mark))
		for _, c := range msg.Payload {
			if c >= 'a' && c <= 'z' {
				c -= 'a' - 'A'
			}
			payload = append(payload, c)
		}
		payload = append(payload, mark...)
		return []sluice.Output{{
			Key:     msg.Key,
			Payload: payload,
			Headers: []sluice.Header{{Key: "handled-by", Value: []byte("{{name}}")}},
		}}, nil
	}
}

func main() {}
