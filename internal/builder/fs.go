package builder

import (
	"encoding/json"
	"os"
)

// sideChannelTimeout reports whether an entrypoint marked the action as timed
// out in the side channel file, as NativeLink's workers do.
func sideChannelTimeout(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var sc struct {
		Failure string `json:"failure"`
	}
	return json.Unmarshal(data, &sc) == nil && sc.Failure == "timeout"
}
