// Package scheduler benchmarks internal/scheduler at farm scale: deep queues
// over many platform shapes served by many simulated executors, each a real
// worker API session (Scheduler.Connect) on an in-memory stream. Run with
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/scheduler
package scheduler
