// Command go_grpc is a Go gRPC client for examples/server/tests/go_grpc.rs: grpc-go (Debian's
// golang-google-grpc-dev, built in GOPATH mode, no module proxy) against the real kiln-server.
//
// grpc-go is what the kubelet's gRPC probe runs, and what Go services call kiln with; its
// HTTP/2 transport (its own flow-control windows, BDP pings, grpc-timeout) is not hyper's,
// h2's, or grpcio's C core.
//
//	go_grpc probe ADDR SERVICE      the kubelet's gRPC probe, as pkg/probe/grpc does it
//	go_grpc infer ADDR MODEL INPUT COLS ROWS GOROUTINES CALLS BIG_ROWS
//	go_grpc fail ADDR MODEL INPUT SHAPE   one call expected to fail: prints its status code
//
// ModelInfer messages are written and read here with the protobuf wire format by hand (Debian's
// grpc-go comes with protobuf's v1 API and no generated inference types); the codec passes
// those bytes through grpc-go unchanged.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"
	grpchealth "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: go_grpc probe|infer|fail ADDR ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "probe":
		if len(os.Args) != 4 {
			err = errors.New("probe ADDR SERVICE")
			break
		}
		err = probe(os.Args[2], os.Args[3], time.Second)
	case "infer":
		err = infer(os.Args[2:])
	case "fail":
		err = fail(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Println("Failure:", err)
		os.Exit(1)
	}
}

// probe does what the kubelet's gRPC prober does (kubernetes pkg/probe/grpc): a blocking dial
// with the probe's timeout, one Health/Check with empty metadata, and success only for
// SERVING. Exit 0 is the probe's Success.
func probe(addr, service string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, addr,
		grpc.WithUserAgent("kube-probe/1.33"), grpc.WithBlock(), grpc.WithInsecure())
	if err != nil {
		return fmt.Errorf("failed to connect service at %q: %v", addr, err)
	}
	defer conn.Close()
	client := grpchealth.NewHealthClient(conn)
	resp, err := client.Check(metadata.NewOutgoingContext(ctx, make(metadata.MD)),
		&grpchealth.HealthCheckRequest{Service: service})
	if err != nil {
		st, _ := status.FromError(err)
		return fmt.Errorf("health rpc probe failed: code %s: %s", st.Code(), st.Message())
	}
	if resp.GetStatus() != grpchealth.HealthCheckResponse_SERVING {
		return fmt.Errorf("service unhealthy (responded with %q)", resp.GetStatus().String())
	}
	fmt.Println("Success: service healthy")
	return nil
}

// raw is a codec that hands grpc-go the message bytes written here, and takes back the
// answer's.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string { return "proto" }

const method = "/inference.GRPCInferenceService/ModelInfer"

func dial(addr string) (*grpc.ClientConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return grpc.DialContext(ctx, addr, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(raw{}), grpc.MaxCallRecvMsgSize(64<<20)))
}

// Answer is one ModelInfer answer's first output.
type Answer struct {
	Output   string    `json:"output"`
	Datatype string    `json:"datatype"`
	Shape    []int64   `json:"shape"`
	Row      []float32 `json:"row"`
}

// infer runs GOROUTINES goroutines on one connection, each making CALLS calls of ROWS rows
// whose every element is the goroutine's value (0, 0.25, 0.5, 0.75, 1 by goroutine mod 5),
// then one call of BIG_ROWS rows of each value. Every other small call is sent
// gzip-compressed (grpc-go's gzip compressor; the big ones are not, so their bytes meet
// the flow-control windows). Every answer must hold equal rows, and equal
// the other answers for its value. Prints one JSON object: the answer's first row by value.
func infer(args []string) error {
	if len(args) != 8 {
		return errors.New("infer ADDR MODEL INPUT COLS ROWS GOROUTINES CALLS BIG_ROWS")
	}
	addr, model, input := args[0], args[1], args[2]
	n := make([]int, 5)
	for i, a := range args[3:] {
		v, err := strconv.Atoi(a)
		if err != nil {
			return err
		}
		n[i] = v
	}
	cols, rows, goroutines, calls, bigRows := n[0], n[1], n[2], n[3], n[4]
	conn, err := dial(addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	value := func(g int) float32 { return float32(g%5) * 0.25 }
	var mu sync.Mutex
	answers := map[float32]Answer{}
	var errs []string
	check := func(v float32, a Answer, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			errs = append(errs, err.Error())
			return
		}
		first, seen := answers[v]
		if !seen {
			answers[v] = a
			return
		}
		if first.Output != a.Output || first.Datatype != a.Datatype ||
			fmt.Sprint(first.Row) != fmt.Sprint(a.Row) {
			errs = append(errs, fmt.Sprintf("value %v: answer %+v differs from %+v", v, a, first))
		}
	}
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for c := 0; c < calls; c++ {
				var opts []grpc.CallOption
				if c%2 == 1 {
					opts = append(opts, grpc.UseCompressor(gzip.Name))
				}
				a, err := call(conn, model, input, value(g), rows, cols, opts...)
				check(value(g), a, err)
			}
		}(g)
	}
	wg.Wait()
	made := goroutines * calls
	for g := 0; g < 5 && bigRows > 0; g++ {
		made++
		a, err := call(conn, model, input, value(g), bigRows, cols)
		if err == nil && a.Shape[0] != int64(bigRows) {
			err = fmt.Errorf("%d rows sent, %v answered", bigRows, a.Shape)
		}
		check(value(g), a, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d calls failed; first: %s", len(errs), errs[0])
	}
	byValue := map[string]Answer{}
	for v, a := range answers {
		byValue[strconv.FormatFloat(float64(v), 'f', -1, 32)] = a
	}
	out, _ := json.Marshal(map[string]interface{}{"calls": made, "answers": byValue})
	fmt.Println(string(out))
	return nil
}

// fail makes one call with SHAPE (comma-separated) and prints its status code and message; a
// call that succeeds is an error.
func fail(args []string) error {
	if len(args) != 4 {
		return errors.New("fail ADDR MODEL INPUT SHAPE")
	}
	conn, err := dial(args[0])
	if err != nil {
		return err
	}
	defer conn.Close()
	var shape []int64
	for _, s := range strings.Split(args[3], ",") {
		d, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		shape = append(shape, d)
	}
	_, err = callShape(conn, args[1], args[2], 0.5, shape)
	if err == nil {
		return errors.New("the call succeeded")
	}
	st, _ := status.FromError(err)
	fmt.Printf("code=%s message=%s\n", st.Code(), st.Message())
	return nil
}

func call(conn *grpc.ClientConn, model, input string, v float32, rows, cols int, opts ...grpc.CallOption) (Answer, error) {
	return callShape(conn, model, input, v, []int64{int64(rows), int64(cols)}, opts...)
}

func callShape(conn *grpc.ClientConn, model, input string, v float32, shape []int64, opts ...grpc.CallOption) (Answer, error) {
	elements := int64(1)
	for _, d := range shape {
		elements *= d
	}
	data := make([]byte, 4*elements)
	for i := int64(0); i < elements; i++ {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	var tensor []byte
	tensor = appendString(tensor, 1, input)
	tensor = appendString(tensor, 2, "FP32")
	var dims []byte
	for _, d := range shape {
		dims = appendVarint(dims, uint64(d))
	}
	tensor = appendBytes(tensor, 3, dims)
	var req []byte
	req = appendString(req, 1, model)
	req = appendBytes(req, 5, tensor)
	req = appendBytes(req, 7, data)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var resp []byte
	if err := conn.Invoke(ctx, method, &req, &resp, opts...); err != nil {
		return Answer{}, err
	}
	return decodeAnswer(resp)
}

// decodeAnswer reads a ModelInferResponse's first output (field 5) and its raw contents
// (field 6), checking every row equals the first.
func decodeAnswer(msg []byte) (Answer, error) {
	var a Answer
	var raws [][]byte
	outputs := 0
	err := fields(msg, func(num int, b []byte) error {
		switch num {
		case 5:
			outputs++
			if outputs > 1 {
				return nil
			}
			return fields(b, func(num int, b []byte) error {
				switch num {
				case 1:
					a.Output = string(b)
				case 2:
					a.Datatype = string(b)
				case 3:
					for len(b) > 0 {
						d, n := binary.Uvarint(b)
						if n <= 0 {
							return errors.New("bad shape")
						}
						a.Shape = append(a.Shape, int64(d))
						b = b[n:]
					}
				}
				return nil
			})
		case 6:
			raws = append(raws, b)
		}
		return nil
	})
	if err != nil {
		return a, err
	}
	if len(raws) == 0 || a.Datatype != "FP32" || len(a.Shape) != 2 {
		return a, fmt.Errorf("no FP32 [rows, n] raw output: %+v, %d raw contents", a, len(raws))
	}
	rows, width := int(a.Shape[0]), int(a.Shape[1])
	if len(raws[0]) != 4*rows*width {
		return a, fmt.Errorf("raw output of %d bytes for shape %v", len(raws[0]), a.Shape)
	}
	row := raws[0][:4*width]
	for r := 1; r < rows; r++ {
		if string(raws[0][4*width*r:4*width*(r+1)]) != string(row) {
			return a, fmt.Errorf("row %d differs from row 0 for equal inputs", r)
		}
	}
	for i := 0; i < width; i++ {
		a.Row = append(a.Row, math.Float32frombits(binary.LittleEndian.Uint32(row[4*i:])))
	}
	return a, nil
}

// fields calls f with each length-delimited field of msg; other wire types are skipped.
func fields(msg []byte, f func(num int, b []byte) error) error {
	for len(msg) > 0 {
		key, n := binary.Uvarint(msg)
		if n <= 0 {
			return errors.New("bad key")
		}
		msg = msg[n:]
		num, wire := int(key>>3), key&7
		switch wire {
		case 0:
			_, n = binary.Uvarint(msg)
			if n <= 0 {
				return errors.New("bad varint")
			}
			msg = msg[n:]
		case 1, 5:
			size := 8
			if wire == 5 {
				size = 4
			}
			if len(msg) < size {
				return errors.New("truncated fixed-size field")
			}
			msg = msg[size:]
		case 2:
			l, n := binary.Uvarint(msg)
			if n <= 0 || uint64(len(msg)-n) < l {
				return errors.New("bad length")
			}
			if err := f(num, msg[n:n+int(l)]); err != nil {
				return err
			}
			msg = msg[n+int(l):]
		default:
			return fmt.Errorf("wire type %d", wire)
		}
	}
	return nil
}

func appendVarint(b []byte, v uint64) []byte {
	var buf [binary.MaxVarintLen64]byte
	return append(b, buf[:binary.PutUvarint(buf[:], v)]...)
}

func appendBytes(b []byte, num int, v []byte) []byte {
	b = appendVarint(b, uint64(num)<<3|2)
	b = appendVarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendString(b []byte, num int, v string) []byte { return appendBytes(b, num, []byte(v)) }
