//! `kv-counter`: counts messages per key in the host kv store and outputs `<key>=<count>`.
//! The key is the message key, or the payload when the message has none (MQTT, NATS).
use sluice_guest::{HandlerError, Message, Output, export_handler, kv};

fn handle(msg: Message) -> Result<Vec<Output>, HandlerError> {
    let key = String::from_utf8_lossy(msg.key.as_deref().unwrap_or(&msg.payload)).into_owned();
    let store_key = format!("count:{key}");
    // A value that is missing (evicted) or unreadable restarts the count.
    let previous = kv::get(&store_key)
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let count = previous + 1;
    kv::set(&store_key, count.to_string());
    Ok(vec![Output::new(format!("{key}={count}")).with_key(key)])
}

export_handler!(handle);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key() {
        let out = |m: Message| String::from_utf8(handle(m).unwrap()[0].payload.clone()).unwrap();
        assert_eq!(out(Message::new("a")), "a=1");
        assert_eq!(out(Message::new("a")), "a=2");
        let mut keyed = Message::new("x");
        keyed.key = Some(b"k");
        assert_eq!(out(keyed), "k=1");
    }
}
