package platform

import (
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

func TestOf(t *testing.T) {
	withProp := func(name string) *repb.Platform {
		return &repb.Platform{Properties: []*repb.Platform_Property{{Name: name, Value: "v"}}}
	}
	tests := []struct {
		name   string
		action *repb.Action
		cmd    *repb.Command
		want   string // the property name expected, "" for none
	}{
		{"both nil", nil, nil, ""},
		{"action only", &repb.Action{Platform: withProp("a")}, nil, "a"},
		{"command only (pre-v2.2 client)", &repb.Action{}, &repb.Command{Platform: withProp("c")}, "c"},
		{"action wins", &repb.Action{Platform: withProp("a")}, &repb.Command{Platform: withProp("c")}, "a"},
		{"empty action platform falls back", &repb.Action{Platform: &repb.Platform{}}, &repb.Command{Platform: withProp("c")}, "c"},
		{"neither has properties", &repb.Action{Platform: &repb.Platform{}}, &repb.Command{Platform: &repb.Platform{}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ""
			if props := Properties(tt.action, tt.cmd); len(props) > 0 {
				got = props[0].GetName()
			}
			if got != tt.want {
				t.Errorf("Properties() first name = %q, want %q", got, tt.want)
			}
			if tt.want == "" && Of(tt.action, tt.cmd) != nil {
				t.Errorf("Of() = non-nil, want nil when no properties are set")
			}
		})
	}
}
