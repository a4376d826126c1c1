// Package inputcheck holds Go benchmarks of the Execution service's check of
// an input root before it queues an action: loading and probing the whole
// tree, as Execute did before, against inputtree.Checker, which remembers the
// subtrees it found complete and valid. Run them with
//
//	go test -run '^$' -bench . -benchtime 200x ./bench/inputcheck
//
// There are no tests here: benchmarks are not timed unit tests.
package inputcheck
