"""Wine 8.0 where the Windows test run needs it to act as Windows (the test rig only).

Installed into the Windows Python's site-packages with a ``.pth`` line that imports it, by
``.ci/windows/setup.sh``; never part of the project, never on a real Windows machine.

- ``msvcrt.locking``: Wine's ``_locking()`` fails on a range another handle holds without
  setting errno (dlls/msvcrt/file.c has "FIXME - what about error settings?"), so Python
  raises with whatever errno was left behind. Microsoft's UCRT sets EACCES for the
  non-blocking modes and EDEADLOCK for the blocking ones: errno is cleared before the call
  and a failure that leaves it 0 is raised as UCRT would.
- ``_winapi.CopyFile2``: Wine 8.0's kernel32 lacks it and Python 3.12's ``shutil.copy2``
  aborts the process calling it. Hidden, shutil copies as it did before 3.12.
"""

import errno
import os
import sys

_UCRT_ERRNO = {}


def _patch_locking():
    import ctypes
    import msvcrt

    crt_errno = ctypes.CDLL("ucrtbase")._errno  # the C runtime python3XX.dll uses
    crt_errno.restype = ctypes.POINTER(ctypes.c_int)
    original = msvcrt.locking
    _UCRT_ERRNO.update(
        {
            msvcrt.LK_NBLCK: errno.EACCES,
            msvcrt.LK_NBRLCK: errno.EACCES,
            msvcrt.LK_LOCK: errno.EDEADLOCK,
            msvcrt.LK_RLCK: errno.EDEADLOCK,
        }
    )

    def locking(fd, mode, nbytes):
        crt_errno()[0] = 0
        try:
            return original(fd, mode, nbytes)
        except OSError as exc:
            if exc.errno == 0 and mode in _UCRT_ERRNO:
                code = _UCRT_ERRNO[mode]
                raise OSError(code, os.strerror(code)) from None
            raise

    locking.__doc__ = original.__doc__
    msvcrt.locking = locking


def _hide_copyfile2():
    import _winapi

    if hasattr(_winapi, "CopyFile2"):
        del _winapi.CopyFile2


if sys.platform == "win32":
    _patch_locking()
    _hide_copyfile2()
