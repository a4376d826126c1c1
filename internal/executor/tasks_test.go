package executor

import (
	"strconv"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/workerapi"
)

// The results kept for reporting again are the newest, at most keep, and
// none older than resendWindow.
func TestLinkKeepsNewestResults(t *testing.T) {
	l := &link{keep: 3}
	for i := range 5 {
		l.record(&workerapi.Finished{TaskId: strconv.Itoa(i)})
	}
	var ids []string
	for _, r := range l.sent {
		ids = append(ids, r.f.GetTaskId())
	}
	if len(ids) != 3 || ids[0] != "2" || ids[2] != "4" {
		t.Errorf("kept %v, want [2 3 4]", ids)
	}
	l.sent[0].at = time.Now().Add(-resendWindow - time.Second)
	l.sent[1].at = l.sent[0].at
	l.record(&workerapi.Finished{TaskId: "5"})
	if len(l.sent) != 2 || l.sent[0].f.GetTaskId() != "4" || l.sent[1].f.GetTaskId() != "5" {
		t.Errorf("after two aged out: %v", l.sent)
	}
}
