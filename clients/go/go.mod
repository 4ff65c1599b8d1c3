module github.com/bwp/clients/go/bwp

go 1.19

require github.com/Shopify/sarama v1.22.1

// sarama's own dependencies, at the versions Debian packages them (module mode builds offline
// from vendor/, assembled by vendor.sh; with a module proxy, `go mod tidy` resolves them instead)
require (
	github.com/DataDog/zstd v1.4.5 // indirect
	github.com/davecgh/go-spew v1.1.1 // indirect
	github.com/eapache/go-resiliency v1.1.0 // indirect
	github.com/eapache/go-xerial-snappy v0.0.0-20180814174437-776d5712da21 // indirect
	github.com/eapache/queue v1.1.0 // indirect
	github.com/golang/snappy v0.0.2 // indirect
	github.com/pierrec/lz4 v2.5.2+incompatible // indirect
	github.com/rcrowley/go-metrics v0.0.0-20180125231941-8732c616f529 // indirect
	golang.org/x/net v0.7.0 // indirect
)
