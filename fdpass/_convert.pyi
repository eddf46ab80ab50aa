# file_from_fd and socket_from_fd are cdef functions, reached through
# FDChannel.recv_file and recv_socket; the module exposes nothing more.
from typing_extensions import CapsuleType

__pyx_capi__: dict[str, CapsuleType]
