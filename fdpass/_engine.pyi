from typing_extensions import CapsuleType

CLOEXEC_METHOD: str
__pyx_capi__: dict[str, CapsuleType]
