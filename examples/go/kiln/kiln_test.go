package kiln

// Run by crates/bindings/tests/go.rs (make test), which installs libkiln, points cgo at it
// through pkg-config and sets KILN_GO_MODEL / KILN_GO_SHA256 to the real magika model and
// KILN_GO_STRINGS / KILN_GO_STRINGS_SHA256 to testdata/strings.onnx.

import (
	"errors"
	"math"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

const row = 2048 // magika: `bytes` int32 [batch, 2048] -> `target_label` float32 [batch, 214]

func load(t *testing.T, sha string) (*Model, error) {
	t.Helper()
	path := os.Getenv("KILN_GO_MODEL")
	if path == "" {
		t.Fatal("KILN_GO_MODEL is not set (crates/bindings/tests/go.rs sets it)")
	}
	rt, err := NewRuntime("")
	if err != nil {
		t.Fatalf("runtime: %v", err)
	}
	defer rt.Close()
	return rt.Load("magika", path, Options{SHA256: sha, Set: map[string]string{
		"max_batch_size":     "32",
		"max_queue_delay_us": "2000",
	}})
}

// input is request id's row: distinct bytes per id.
func input(id int) Tensor {
	v := make([]int32, row)
	for i := range v {
		v[i] = int32((i*31 + id*97 + id*id) % 257)
	}
	return Int32Tensor("bytes", []int64{1, row}, v)
}

func scores(t *testing.T, out map[string]Tensor) []float32 {
	t.Helper()
	s, err := out["target_label"].Float32s()
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 214 {
		t.Fatalf("target_label has %d values, want 214", len(s))
	}
	return s
}

// 32 goroutines infer at once: every answer equals the same input run alone, and the
// scheduler batched some of them together.
func TestGoroutinesAreBatchedAndMatchSingleRuns(t *testing.T) {
	m, err := load(t, os.Getenv("KILN_GO_SHA256"))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer m.Close()
	const goroutines, each = 32, 8
	alone := make([][]float32, goroutines*each)
	for id := range alone {
		out, err := m.Infer([]Tensor{input(id)}, 10*time.Second)
		if err != nil {
			t.Fatalf("alone %d: %v", id, err)
		}
		alone[id] = scores(t, out)
	}
	var wg sync.WaitGroup
	failures := make(chan string, goroutines*each)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for k := 0; k < each; k++ {
				id := g*each + k
				out, err := m.Infer([]Tensor{input(id)}, 10*time.Second)
				if err != nil {
					failures <- err.Error()
					continue
				}
				s, err := out["target_label"].Float32s()
				if err != nil || len(s) != len(alone[id]) {
					failures <- "bad output"
					continue
				}
				for i := range s {
					if math.Abs(float64(s[i]-alone[id][i])) > 1e-4 {
						failures <- "answer differs from the same input run alone"
						break
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Error(f)
	}
	sizes := m.BatchSizes()
	batched := false
	for n := 2; n < len(sizes); n++ {
		if sizes[n] > 0 {
			batched = true
		}
	}
	t.Logf("batch sizes seen (count by rows): %v", sizes)
	if !batched {
		t.Errorf("32 concurrent goroutines were never batched together: %v", sizes)
	}
}

// Failures on many goroutines at once each carry their own status and message (the message
// is read in the C call that failed, so a goroutine moving between OS threads cannot read
// another call's).
func TestErrorsAreTypedAndEachGoroutineGetsItsOwn(t *testing.T) {
	m, err := load(t, os.Getenv("KILN_GO_SHA256"))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer m.Close()
	var wg sync.WaitGroup
	problems := make(chan string, 64)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for k := 0; k < 4; k++ {
				var kerr *Error
				if g%2 == 0 {
					name := "nope" + string(rune('a'+g%26))
					_, err := m.Infer([]Tensor{{Name: name, DType: Int32, Shape: []int64{1, row}, Data: make([]byte, 4*row)}}, time.Second)
					if !errors.As(err, &kerr) || kerr.Status != StatusUnknownInput || !strings.Contains(kerr.Message, name) {
						problems <- "unknown input: " + describe(err)
					}
				} else {
					_, err := m.Infer([]Tensor{Int32Tensor("bytes", []int64{1, 7}, make([]int32, 7))}, time.Second)
					if !errors.As(err, &kerr) || kerr.Status != StatusShapeMismatch || !strings.Contains(kerr.Message, "bytes") {
						problems <- "shape: " + describe(err)
					}
				}
			}
		}(g)
	}
	wg.Wait()
	close(problems)
	for p := range problems {
		t.Error(p)
	}
	// A wrong digest refuses the load with its own status.
	_, err = load(t, strings.Repeat("0", 64))
	var kerr *Error
	if !errors.As(err, &kerr) || kerr.Status != StatusChecksumMismatch {
		t.Errorf("wrong sha256: %v", describe(err))
	}
}

func describe(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// String tensors both ways (strings.onnx: `text` string [batch, 3] -> `echo` (Identity) and
// `ids` int64 (LabelEncoder: "cat" 1, "dog" 2, "ünïcödé" 3, else -1); `n` int64 [batch, 1] ->
// `label` string (1 "one", 2 "two", else "other")), and a NUL inside a string refused.
func TestStringTensors(t *testing.T) {
	rt, err := NewRuntime("")
	if err != nil {
		t.Fatalf("runtime: %v", err)
	}
	defer rt.Close()
	m, err := rt.Load("strings", os.Getenv("KILN_GO_STRINGS"), Options{SHA256: os.Getenv("KILN_GO_STRINGS_SHA256")})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer m.Close()
	text := []string{"cat", "dog", "ünïcödé", "bird", "", "cat"}
	n := Tensor{Name: "n", DType: Int64, Shape: []int64{2, 1}, Data: []byte{1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0}}
	out, err := m.Infer([]Tensor{StringTensor("text", []int64{2, 3}, text), n}, 10*time.Second)
	if err != nil {
		t.Fatalf("infer: %v", err)
	}
	echo, err := out["echo"].Strings()
	if err != nil || strings.Join(echo, "|") != strings.Join(text, "|") {
		t.Fatalf("echo = %q (%v), want %q", echo, err, text)
	}
	label, err := out["label"].Strings()
	if err != nil || len(label) != 2 || label[0] != "one" || label[1] != "other" {
		t.Fatalf("label = %q (%v)", label, err)
	}
	ids := out["ids"].Data
	want := []int64{1, 2, 3, -1, -1, 1}
	for i, w := range want {
		got := int64(0)
		for b := 7; b >= 0; b-- {
			got = got<<8 | int64(ids[8*i+b])
		}
		if got != w {
			t.Fatalf("ids[%d] = %d, want %d", i, got, w)
		}
	}
	_, err = m.Infer([]Tensor{StringTensor("text", []int64{1, 3}, []string{"a\x00b", "c", "d"}), {Name: "n", DType: Int64, Shape: []int64{1, 1}, Data: make([]byte, 8)}}, time.Second)
	var e *Error
	if !errors.As(err, &e) || e.Status != StatusInvalidArgument || !strings.Contains(e.Message, "NUL") {
		t.Fatalf("a NUL inside a string: %v", err)
	}
}
