package builder

// DiffStaging lets the benchmark compare with staging every input.
var DiffStaging = &diffStaging
