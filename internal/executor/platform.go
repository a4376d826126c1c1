package executor

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// MinimumProperties are matched as numeric minimums, as NativeLink's
// "minimum" properties: an action asking for cpu_count=4 runs on an executor
// with 8.
var MinimumProperties = []string{"cpu_count", "memory_kb"}

// DefaultProperties is what an executor advertises when its configuration
// names none: the properties Bazel and Buck2 users commonly set. Each
// architecture is offered under both spellings in use (Go's "amd64" and the
// kernel's "x86_64"), since matching is by exact value.
func DefaultProperties() map[string][]string {
	arch := []string{runtime.GOARCH}
	switch runtime.GOARCH {
	case "amd64":
		arch = append(arch, "x86_64")
	case "arm64":
		arch = append(arch, "aarch64")
	}
	props := map[string][]string{
		"OSFamily":  {runtime.GOOS},
		"Arch":      arch,
		"cpu_arch":  arch,
		"cpu_count": {strconv.Itoa(runtime.NumCPU())},
	}
	if kb := MemTotalKiB(); kb > 0 {
		props["memory_kb"] = []string{strconv.FormatInt(kb, 10)}
	}
	return props
}

// MemTotalKiB reads the machine's memory from /proc/meminfo (0 if unknown).
func MemTotalKiB() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, _ := strconv.ParseInt(fields[1], 10, 64)
			return kb
		}
	}
	return 0
}
