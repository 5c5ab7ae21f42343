// ttfb: an open-loop HTTP load generator that times the first byte of each answer's body.
//
// vegeta times a request until its body is read to the end, which for a streamed answer is
// the whole stream. This tool starts requests on a fixed schedule whatever the answers do
// (open loop), and records for each one the time to the first byte of its body and the time
// to its end. Targets are vegeta's JSON format, one per line, used in turn.
//
// The report (JSON on stdout) has vegeta's shape where it can: "latencies" (first byte, ns),
// "complete" (whole body, ns), "status_codes", "errors". A 200 whose body lacks -expect is
// counted as "200-incomplete". "late_max_ns" is how far behind its schedule the latest
// request started, so a generator that cannot keep up shows it.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"
)

type target struct {
	Method string              `json:"method"`
	URL    string              `json:"url"`
	Body   []byte              `json:"body"`
	Header map[string][]string `json:"header"`
}

type result struct {
	status   string
	firstNs  int64
	wholeNs  int64
	errorMsg string
}

func main() {
	targetsPath := flag.String("targets", "", "vegeta JSON targets, one per line")
	rate := flag.Int("rate", 10, "requests per second")
	duration := flag.Duration("duration", 10*time.Second, "how long to send")
	timeout := flag.Duration("timeout", 30*time.Second, "per request")
	expect := flag.String("expect", "", "a 200 counts as complete only if its body contains this")
	flag.Parse()
	targets, err := readTargets(*targetsPath)
	if err != nil || len(targets) == 0 {
		fmt.Fprintln(os.Stderr, "ttfb: no targets:", err)
		os.Exit(2)
	}
	client := &http.Client{
		Timeout:   *timeout,
		Transport: &http.Transport{MaxIdleConnsPerHost: 10000, DisableCompression: true},
	}
	results, lateMax := attack(client, targets, *rate, *duration, []byte(*expect))
	if err := json.NewEncoder(os.Stdout).Encode(report(results, lateMax)); err != nil {
		os.Exit(1)
	}
}

func readTargets(path string) ([]target, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	var targets []target
	scanner := bufio.NewScanner(file)
	scanner.Buffer(make([]byte, 1<<20), 1<<24)
	for scanner.Scan() {
		var t target
		if err := json.Unmarshal(scanner.Bytes(), &t); err != nil {
			return nil, err
		}
		targets = append(targets, t)
	}
	return targets, scanner.Err()
}

// attack starts request n at start + n/rate, without waiting for earlier answers.
func attack(client *http.Client, targets []target, rate int, duration time.Duration, expect []byte) ([]result, time.Duration) {
	total := int(duration.Seconds() * float64(rate))
	interval := time.Second / time.Duration(rate)
	results := make([]result, total)
	var wg sync.WaitGroup
	var lateMax time.Duration
	start := time.Now()
	for n := 0; n < total; n++ {
		due := start.Add(time.Duration(n) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		} else if -wait > lateMax {
			lateMax = -wait
		}
		wg.Add(1)
		go func(n int) {
			defer wg.Done()
			results[n] = hit(client, targets[n%len(targets)], expect)
		}(n)
	}
	wg.Wait()
	return results, lateMax
}

func hit(client *http.Client, t target, expect []byte) result {
	req, err := http.NewRequest(t.Method, t.URL, bytes.NewReader(t.Body))
	if err != nil {
		return result{status: "0", errorMsg: err.Error()}
	}
	req.Header = t.Header
	began := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return result{status: "0", errorMsg: err.Error()}
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	first := make([]byte, 1)
	n, err := io.ReadFull(resp.Body, first)
	firstNs := time.Since(began).Nanoseconds()
	body.Write(first[:n])
	if err == nil {
		_, err = io.Copy(&body, resp.Body)
	}
	r := result{status: strconv.Itoa(resp.StatusCode), firstNs: firstNs, wholeNs: time.Since(began).Nanoseconds()}
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
		r.errorMsg = err.Error()
	}
	if resp.StatusCode == 200 && len(expect) > 0 && !bytes.Contains(body.Bytes(), expect) {
		r.status = "200-incomplete"
	}
	return r
}

func report(results []result, lateMax time.Duration) map[string]any {
	codes := map[string]int{}
	var errors []string
	var first, whole []int64
	for _, r := range results {
		codes[r.status]++
		if r.errorMsg != "" && len(errors) < 10 {
			errors = append(errors, r.errorMsg)
		}
		if r.status != "0" {
			first = append(first, r.firstNs)
			whole = append(whole, r.wholeNs)
		}
	}
	return map[string]any{
		"requests":     len(results),
		"status_codes": codes,
		"errors":       errors,
		"latencies":    percentiles(first),
		"complete":     percentiles(whole),
		"late_max_ns":  lateMax.Nanoseconds(),
	}
}

func percentiles(ns []int64) map[string]int64 {
	out := map[string]int64{"50th": 0, "90th": 0, "99th": 0, "max": 0}
	if len(ns) == 0 {
		return out
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i] < ns[j] })
	at := func(q float64) int64 { return ns[int(q*float64(len(ns)-1))] }
	out["50th"], out["90th"], out["99th"], out["max"] = at(0.50), at(0.90), at(0.99), ns[len(ns)-1]
	return out
}
