"""Pure codecs and card sessions for readerd: bytes in, typed objects out.

Nothing here performs I/O or imports a reader library (pyscard, nfcpy), a bus (zmq) or a logging setup:
card sessions drive an abstract :class:`protocols.transport.Transport`, so the same code runs against
pcscd, nfcpy, the in-process simulator and scripted transcripts in tests.
"""
