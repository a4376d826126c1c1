package workerpool

import (
	"bytes"
	"os"
	"strconv"
)

var pageSize = uint64(os.Getpagesize())

// procEntry is what /proc/PID/stat says about one process.
type procEntry struct {
	ppid int
	rss  uint64 // bytes
}

// readProcTable reads the parent and resident size of every process. A
// process that exits while it is being read is simply left out. The kernel
// offers no cheaper way to find all descendants (task/*/children needs
// CONFIG_PROC_CHILDREN, often absent), and one pass serves every worker.
func readProcTable() (map[int]procEntry, error) {
	dir, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	table := make(map[int]procEntry, len(names))
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + name + "/stat")
		if err != nil {
			continue
		}
		if e, ok := parseStat(stat); ok {
			table[pid] = e
		}
	}
	return table, nil
}

// parseStat extracts ppid (field 4) and rss in pages (field 24) from a
// /proc/PID/stat line. The command name (field 2) is in parentheses and may
// itself contain spaces and parentheses, so fields are counted from the last
// ')'.
func parseStat(stat []byte) (procEntry, bool) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return procEntry{}, false
	}
	fields := bytes.Fields(stat[end+1:])
	const ppidField, rssField = 4 - 3, 24 - 3 // fields[0] is field 3, the state
	if len(fields) <= rssField {
		return procEntry{}, false
	}
	ppid, err := strconv.Atoi(string(fields[ppidField]))
	if err != nil {
		return procEntry{}, false
	}
	rss, err := strconv.ParseInt(string(fields[rssField]), 10, 64)
	if err != nil || rss < 0 {
		return procEntry{}, false
	}
	return procEntry{ppid: ppid, rss: uint64(rss) * pageSize}, true
}

// treeRSS returns the resident bytes of each root and all its descendants,
// given a process table. A root absent from the table counts as 0.
func treeRSS(table map[int]procEntry, roots []int) map[int]uint64 {
	children := make(map[int][]int, len(table))
	for pid, e := range table {
		children[e.ppid] = append(children[e.ppid], pid)
	}
	sums := make(map[int]uint64, len(roots))
	for _, root := range roots {
		e, ok := table[root]
		if !ok {
			sums[root] = 0
			continue
		}
		total := e.rss
		seen := map[int]bool{root: true}
		queue := append([]int(nil), children[root]...)
		for len(queue) > 0 {
			pid := queue[0]
			queue = queue[1:]
			if seen[pid] { // pid reuse cannot loop, but be safe
				continue
			}
			seen[pid] = true
			total += table[pid].rss
			queue = append(queue, children[pid]...)
		}
		sums[root] = total
	}
	return sums
}

// measureTrees reads /proc once and returns the resident bytes of each root's
// process tree.
func measureTrees(roots []int) (map[int]uint64, error) {
	if len(roots) == 0 {
		return map[int]uint64{}, nil
	}
	table, err := readProcTable()
	if err != nil {
		return nil, err
	}
	return treeRSS(table, roots), nil
}

// measureTree returns the resident bytes of root and all its descendants,
// reading only that tree: /proc/PID/stat of each member and
// /proc/PID/task/*/children to find the next generation. The lease release
// measures one worker after every request, and a pass over all of /proc
// costs O(processes on the machine) — 2–9 ms on a shared build machine —
// where the tree of a worker is a handful of processes. Kernels without
// CONFIG_PROC_CHILDREN have no children files: then it falls back to the
// whole table.
func measureTree(root int) (uint64, error) {
	rootDir := "/proc/" + strconv.Itoa(root)
	if _, err := os.Stat(rootDir + "/task/" + strconv.Itoa(root) + "/children"); err != nil {
		if os.IsNotExist(err) {
			if _, serr := os.Stat(rootDir); serr != nil {
				return 0, nil // the root is gone: nothing resident
			}
		}
		sums, err := measureTrees([]int{root})
		if err != nil {
			return 0, err
		}
		return sums[root], nil
	}
	var total uint64
	seen := map[int]bool{}
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		dir := "/proc/" + strconv.Itoa(pid)
		stat, err := os.ReadFile(dir + "/stat")
		if err != nil {
			continue // exited while being read
		}
		if e, ok := parseStat(stat); ok {
			total += e.rss
		}
		queue = append(queue, readChildren(dir)...)
	}
	return total, nil
}

// readChildren lists the children of every thread of the process at dir: a
// child's parent is the thread that forked it, so one thread's file is not
// enough for a multi-threaded worker (node, a JVM).
func readChildren(dir string) []int {
	tasks, err := os.ReadDir(dir + "/task")
	if err != nil {
		return nil
	}
	var kids []int
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/task/" + task.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range bytes.Fields(b) {
			if pid, err := strconv.Atoi(string(f)); err == nil {
				kids = append(kids, pid)
			}
		}
	}
	return kids
}
