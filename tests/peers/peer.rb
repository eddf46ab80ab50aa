# The Ruby peer of tests/test_interop_ruby.py:
#   ruby peer.rb MODE SOCKET_FD [ARGS...]
# SOCKET_FD is an AF_UNIX stream socket inherited from the test. Each mode
# is one side of one exchange; it prints what it saw and exits non-zero
# (with the reason on stderr) when the message is not what it must be.
require "json"
require "socket"

mode, fd, *args = ARGV
sock = UNIXSocket.for_fd(Integer(fd))

# The message waiting must be one data byte, 0x00, as IO::FDPass and
# send_io send it: recv_io itself never looks at the byte.
def expect_zero_byte(sock)
  byte = sock.recv(1, Socket::MSG_PEEK)
  abort "expected the byte \"\\x00\", got #{byte.inspect}" unless byte == "\0"
end

# Into each descriptor, in order: "ruby wrote <n>\n".
def write_each(ios)
  ios.each_with_index do |io, i|
    io.write("ruby wrote #{i}\n")
    io.close
  end
end

# This process's open descriptors that are pipes: what was left open.
def open_pipes
  Dir.children("/proc/self/fd").filter_map do |n|
    File.readlink("/proc/self/fd/#{n}") rescue nil
  end.select { |target| target.start_with?("pipe:") }
end

case mode
when "send_io"          # PATH: UNIXSocket#send_io of that file
  File.open(args[0]) { |f| sock.send_io(f) }
when "recv_io"          # UNIXSocket#recv_io, then write to what came
  expect_zero_byte(sock)
  write_each([sock.recv_io])
when "sendmsg"          # PAYLOAD PATH...: one sendmsg, unix_rights of the files
  files = args[1..].map { |path| File.open(path) }
  sock.sendmsg(args[0], 0, nil, Socket::AncillaryData.unix_rights(*files))
  files.each(&:close)
when "recvmsg"          # recvmsg(scm_rights: true): every descriptor, the payload
  data, _, _, *controls = sock.recvmsg(64, 0, nil, scm_rights: true)
  ios = controls.select { |c| c.cmsg_is?(:SOCKET, :RIGHTS) }.flat_map(&:unix_rights)
  write_each(ios)
  puts JSON.generate({ "payload" => data.bytes, "fds" => ios.size })
when "recv_io_refuses"  # recv_io of a message with two descriptors, then of one
  before = open_pipes
  begin
    sock.recv_io
    puts JSON.generate({ "error" => nil })
    exit
  rescue SocketError => e
    error = "#{e.class}: #{e.message}"
  end
  left = open_pipes - before
  expect_zero_byte(sock)
  write_each([sock.recv_io])
  puts JSON.generate({ "error" => error, "left_open" => left })
else
  abort "unknown mode #{mode.inspect}"
end
