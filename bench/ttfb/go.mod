module billing.local/bench/ttfb

go 1.22
