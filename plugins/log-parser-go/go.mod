module sluice.dev/log-parser-go

go 1.24

require sluice.dev/guest v0.0.0

replace sluice.dev/guest => ../../guest-sdk/go
