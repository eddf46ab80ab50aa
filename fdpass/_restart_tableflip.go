// The tableflip row of `python -m fdpass bench restart`: an HTTP server
// whose listener github.com/cloudflare/tableflip hands to a new copy of
// this program on SIGHUP, as tableflip's documentation shows.
//
//	tableflip ADDRESS TAG_FILE
//
// Each answer's body is the generation named in TAG_FILE when this process
// started. "ready PID" on stdout once serving; the old process shuts its
// server down gracefully (net/http's Shutdown: idle keep-alive connections
// closed, requests in progress finished) once its successor is ready.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: tableflip ADDRESS TAG_FILE")
		os.Exit(2)
	}
	tag, err := os.ReadFile(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	body := []byte(strings.TrimSpace(string(tag)) + "\n")
	upg, err := tableflip.New(tableflip.Options{UpgradeTimeout: 20 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer upg.Stop()
	go func() {
		hup := make(chan os.Signal, 1)
		signal.Notify(hup, syscall.SIGHUP)
		for range hup {
			if err := upg.Upgrade(); err != nil {
				fmt.Fprintln(os.Stderr, "upgrade failed:", err)
			}
		}
	}()
	ln, err := upg.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(body)
	})}
	go server.Serve(ln)
	if err := upg.Ready(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("ready %d\n", os.Getpid())
	<-upg.Exit()
	time.AfterFunc(20*time.Second, func() { os.Exit(1) })
	server.Shutdown(context.Background())
}
