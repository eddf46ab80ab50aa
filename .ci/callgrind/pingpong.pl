# Perl IO::FDPass's side of .ci/callgrind/pingpong.py: perl pingpong.pl N MODE,
# MODE "loop" (send, recv, POSIX::close) or "bench" (and the one-byte reply
# and its read, as fdpass/_bench.py's Perl worker does).  Perl's lexicals
# are already what a Python function's locals are: no "floop" here.
use strict;
use IO::FDPass;
use POSIX ();
use Socket;
my ($n, $mode) = @ARGV;
socketpair(my $x, my $y, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die "socketpair: $!";
my ($sa, $sb) = (fileno($x), fileno($y));
my $byte;
# Two loops, so that no test of the mode is counted per message.
if ($mode eq "loop") {
    for (1 .. $n) {
        IO::FDPass::send($sa, 0) or die "send: $!";
        my $fd = IO::FDPass::recv($sb);
        $fd >= 0 or die "recv: $!";
        POSIX::close($fd);
    }
} elsif ($mode eq "bench") {
    for (1 .. $n) {
        IO::FDPass::send($sa, 0) or die "send: $!";
        my $fd = IO::FDPass::recv($sb);
        $fd >= 0 or die "recv: $!";
        POSIX::close($fd);
        POSIX::write($sb, "k", 1) == 1 or die "write: $!";
        POSIX::read($sa, $byte, 1) == 1 or die "read: $!";
    }
} else {
    die "unknown mode $mode";
}
