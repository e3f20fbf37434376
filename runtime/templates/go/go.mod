module example.com/{{name}}

go 1.24

require sluice.dev/guest v0.0.0

replace sluice.dev/guest => {{sdk}}/go
