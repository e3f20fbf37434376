module sluice.dev/guest

go 1.24
