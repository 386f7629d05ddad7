// Command pause is the real-node plane's pod sandbox image and its test
// workload: it waits for SIGTERM or SIGINT, then, after -term-delay (a
// workload that shuts down slowly), exits 0. It needs no libc, shell or
// files, so its image is the static binary alone.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	fs := flag.NewFlagSet("pause", flag.ContinueOnError)
	delay := fs.Duration("term-delay", 0, "how long to keep running after SIGTERM")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("pause: running")
	s := <-sig
	fmt.Printf("pause: %v; exiting in %s\n", s, *delay)
	time.Sleep(*delay)
}
