package actioncache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/digest"
)

func resultWithExitCode(code int32) *repb.ActionResult {
	return &repb.ActionResult{
		ExitCode:    code,
		OutputFiles: []*repb.OutputFile{{Path: "out", Digest: digest.Compute(digest.SHA256, []byte(fmt.Sprint(code))).Proto()}},
	}
}

func TestDiskPutGet(t *testing.T) {
	ctx := context.Background()
	d, err := NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	sha := digest.Compute(digest.SHA256, []byte("action"))
	// The same hash under BLAKE3: digest functions are separate namespaces.
	blake := digest.Digest{Function: digest.BLAKE3, Hash: sha.Hash, Size: sha.Size}
	keys := []struct {
		instance string
		action   digest.Digest
	}{
		{"", sha}, {"main", sha}, {"main/sub", sha}, {"../escape", sha}, {"main", blake},
		{"main", digest.Compute(digest.SHA256, []byte("other action"))},
	}
	for i, k := range keys {
		if _, err := d.Get(ctx, k.instance, k.action); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get before Put: %v, want ErrNotFound", err)
		}
		if err := d.Put(ctx, k.instance, k.action, resultWithExitCode(int32(i))); err != nil {
			t.Fatal(err)
		}
	}
	for i, k := range keys {
		got, err := d.Get(ctx, k.instance, k.action)
		if err != nil {
			t.Fatalf("Get(%q, %v): %v", k.instance, k.action, err)
		}
		if !proto.Equal(got, resultWithExitCode(int32(i))) {
			t.Errorf("Get(%q, %v) = %v, want exit code %d", k.instance, k.action, got, i)
		}
	}

	// Overwrite, then reopen: the newest result survives.
	if err := d.Put(ctx, "main", sha, resultWithExitCode(42)); err != nil {
		t.Fatal(err)
	}
	d2, err := NewDisk(d.root)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := d2.Get(ctx, "main", sha); err != nil || got.GetExitCode() != 42 {
		t.Fatalf("after reopen: %v, %v; want exit code 42", got, err)
	}
	// Nothing is written outside the cache directory.
	if _, err := os.Stat(filepath.Join(filepath.Dir(d.root), "escape")); err == nil {
		t.Error("instance name escaped the cache directory")
	}
}

func TestDiskRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	d, err := NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	good := digest.Compute(digest.SHA256, []byte("a"))
	for name, action := range map[string]digest.Digest{
		"path traversal hash": {Function: digest.SHA256, Hash: "../../../../etc/passwd", Size: 1},
		"short hash":          {Function: digest.SHA256, Hash: "ab", Size: 1},
		"negative size":       {Function: digest.SHA256, Hash: good.Hash, Size: -1},
		"unsupported":         {Function: repb.DigestFunction_MD5, Hash: good.Hash, Size: 1},
	} {
		if err := d.Put(ctx, "", action, resultWithExitCode(1)); !errors.Is(err, digest.ErrInvalid) {
			t.Errorf("%s: Put = %v, want digest.ErrInvalid", name, err)
		}
		if _, err := d.Get(ctx, "", action); !errors.Is(err, digest.ErrInvalid) {
			t.Errorf("%s: Get = %v, want digest.ErrInvalid", name, err)
		}
	}
	if err := d.Put(ctx, "", good, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("Put(nil) = %v, want ErrInvalid", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := d.Put(cancelled, "", good, resultWithExitCode(1)); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with cancelled context = %v", err)
	}
}

// A damaged entry (which only a disk fault could produce, since writes are
// atomic) is a miss, so the client re-runs the action and its Put repairs it.
func TestDiskDamagedEntryIsAMiss(t *testing.T) {
	ctx := context.Background()
	d, err := NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	action := digest.Compute(digest.SHA256, []byte("a"))
	if err := d.Put(ctx, "i", action, resultWithExitCode(7)); err != nil {
		t.Fatal(err)
	}
	p, err := d.path("i", action)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte{0xff, 0xff, 0xff}, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Get(ctx, "i", action); !errors.Is(err, ErrNotFound) {
		t.Fatalf("damaged entry: %v, want ErrNotFound", err)
	}
	if err := d.Put(ctx, "i", action, resultWithExitCode(8)); err != nil {
		t.Fatal(err)
	}
	if got, err := d.Get(ctx, "i", action); err != nil || got.GetExitCode() != 8 {
		t.Fatalf("after repair: %v, %v", got, err)
	}
}

const childDirEnv = "HEARTH_ACTIONCACHE_TEST_CHILD_DIR"

// TestMain turns the test binary into the writer that TestDiskSurvivesKill
// kills, when started with childDirEnv set.
func TestMain(m *testing.M) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		putForever(dir)
	}
	os.Exit(m.Run())
}

// putForever rewrites one result in a loop until the process is killed.
func putForever(dir string) {
	d, err := NewDisk(dir)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	action := digest.Compute(digest.SHA256, []byte("crash"))
	big := strings.Repeat("x", 256<<10) // large enough that a write takes a while
	for i := int32(1); ; i++ {
		r := resultWithExitCode(i)
		r.StdoutRaw = []byte(big)
		if err := d.Put(context.Background(), "", action, r); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		if i == 1 {
			fmt.Println("written")
		}
	}
}

// Killing a writer at an arbitrary point never leaves a partial result:
// after kill -9 the entry decodes to one of the results written, and the
// interrupted write's temporary file is removed on reopen.
func TestDiskSurvivesKill(t *testing.T) {
	dir := t.TempDir()
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), childDirEnv+"="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, _ := bufio.NewReader(out).ReadString('\n')
		if line != "written\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child said %q", line)
		}
		time.Sleep(time.Duration(10+round*15) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil { // SIGKILL
			t.Fatal(err)
		}
		cmd.Wait()

		d, err := NewDisk(dir)
		if err != nil {
			t.Fatal(err)
		}
		got, err := d.Get(context.Background(), "", digest.Compute(digest.SHA256, []byte("crash")))
		if err != nil {
			t.Fatalf("round %d: after kill: %v", round, err)
		}
		if got.GetExitCode() < 1 || len(got.GetStdoutRaw()) != 256<<10 {
			t.Fatalf("round %d: partial result: exit code %d, %d bytes of stdout", round, got.GetExitCode(), len(got.GetStdoutRaw()))
		}
		if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
			t.Fatalf("round %d: %d temporary files left after reopen", round, len(left))
		}
	}
}

// Puts through spare temporary files store what they store without them,
// through the durable Disk and its Relaxed view, and Close leaves tmp/
// empty.
func TestDiskSpareFiles(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d, err := NewDisk(dir)
	if err != nil {
		t.Fatal(err)
	}
	d.KeepSpareFiles(2)
	relaxed := d.Relaxed()
	for i := range int32(6) {
		store := Store(d)
		if i%2 == 1 {
			store = relaxed
		}
		a := digest.Compute(digest.SHA256, []byte(fmt.Sprint("action ", i)))
		if err := store.Put(ctx, "", a, resultWithExitCode(i)); err != nil {
			t.Fatal(err)
		}
		got, err := d.Get(ctx, "", a)
		if err != nil || got.GetExitCode() != i {
			t.Fatalf("action %d: %v, %v", i, got, err)
		}
	}
	d.Close()
	ents, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil || len(ents) != 0 {
		t.Fatalf("tmp/ after Close: %v, %v", ents, err)
	}
}

// A relaxed Put creates its shard directories without syncing them; the
// first durable Put through them syncs each one's parent, once.
func TestDiskDirectorySyncs(t *testing.T) {
	ctx := context.Background()
	d, err := NewDisk(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var synced []string
	orig := syncDir
	syncDir = func(dir string) error { synced = append(synced, dir); return orig(dir) }
	t.Cleanup(func() { syncDir = orig })
	a := digest.Compute(digest.SHA256, []byte("an action"))
	for _, step := range []struct {
		store Store
		syncs int // directory syncs this Put must make
	}{
		{d.Relaxed(), 0}, // new function, instance and shard directories, loose
		{d.Relaxed(), 0},
		{d, 3}, // each of the three loose directories' parents
		{d, 0},
		{d.Relaxed(), 0},
	} {
		synced = nil
		if err := step.store.Put(ctx, "main", a, resultWithExitCode(1)); err != nil {
			t.Fatal(err)
		}
		if len(synced) != step.syncs {
			t.Errorf("Put synced %q, want %d directory syncs", synced, step.syncs)
		}
	}
	// A second Disk on the same directory (a restart) knows nothing of what
	// the first made durable: its first durable Put syncs again.
	d2, err := NewDisk(d.root)
	if err != nil {
		t.Fatal(err)
	}
	synced = nil
	if err := d2.Put(ctx, "main", a, resultWithExitCode(2)); err != nil {
		t.Fatal(err)
	}
	if len(synced) != 3 {
		t.Errorf("first durable Put after reopening synced %q, want 3 directory syncs", synced)
	}
	got, err := d2.Get(ctx, "main", a)
	if err != nil || got.GetExitCode() != 2 {
		t.Fatalf("Get = %v, %v", got, err)
	}
}
