// The Go peer of tests/test_interop_go.py, standard library only:
//
//	peer send SOCKET_FD MESSAGES   MESSAGES: [{"payload": "...", "paths": ["..."]}, ...]
//	peer recv SOCKET_FD MESSAGES   MESSAGES: [{"payload": "...", "fds": 3}, ...]
//
// SOCKET_FD is an AF_UNIX stream or seqpacket socket inherited from the
// test. send opens the files and sends one sendmsg per message, its
// descriptors in syscall.UnixRights. recv receives one message per entry,
// insists on exactly the payload and the number of descriptors given
// (else it exits 1, saying why), takes them with syscall.ParseUnixRights,
// writes "go wrote <message>.<n>\n" into each, and closes them.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

type message struct {
	Payload string   `json:"payload"`
	Paths   []string `json:"paths"`
	Fds     int      `json:"fds"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "go peer: "+format+"\n", args...)
	os.Exit(1)
}

func send(sock int, messages []message) {
	for _, m := range messages {
		var fds []int
		for _, path := range m.Paths {
			fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
			if err != nil {
				fail("open %s: %v", path, err)
			}
			fds = append(fds, fd)
		}
		if err := syscall.Sendmsg(sock, []byte(m.Payload), syscall.UnixRights(fds...), nil, 0); err != nil {
			fail("sendmsg: %v", err)
		}
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}
}

func recv(sock int, messages []message) {
	for i, want := range messages {
		buf := make([]byte, 4096)
		oob := make([]byte, syscall.CmsgSpace(4*256))
		n, oobn, flags, _, err := syscall.Recvmsg(sock, buf, oob, syscall.MSG_CMSG_CLOEXEC)
		if err != nil {
			fail("recvmsg: %v", err)
		}
		if flags&(syscall.MSG_TRUNC|syscall.MSG_CTRUNC) != 0 {
			fail("message %d truncated (flags %#x)", i, flags)
		}
		controls, err := syscall.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			fail("ParseSocketControlMessage: %v", err)
		}
		var fds []int
		for _, c := range controls {
			got, err := syscall.ParseUnixRights(&c)
			if err != nil {
				fail("ParseUnixRights: %v", err)
			}
			fds = append(fds, got...)
		}
		for j, fd := range fds {
			line := fmt.Sprintf("go wrote %d.%d\n", i, j)
			if _, err := syscall.Write(fd, []byte(line)); err != nil {
				fail("write to descriptor %d.%d: %v", i, j, err)
			}
			syscall.Close(fd)
		}
		if !bytes.Equal(buf[:n], []byte(want.Payload)) || len(fds) != want.Fds {
			fail("message %d: got payload %q with %d descriptors, want %q with %d",
				i, buf[:n], len(fds), want.Payload, want.Fds)
		}
	}
}

func main() {
	if len(os.Args) != 4 {
		fail("usage: peer send|recv SOCKET_FD MESSAGES")
	}
	sock, err := strconv.Atoi(os.Args[2])
	if err != nil {
		fail("socket descriptor: %v", err)
	}
	var messages []message
	if err := json.Unmarshal([]byte(os.Args[3]), &messages); err != nil {
		fail("messages: %v", err)
	}
	switch os.Args[1] {
	case "send":
		send(sock, messages)
	case "recv":
		recv(sock, messages)
	default:
		fail("unknown mode %q", os.Args[1])
	}
}
