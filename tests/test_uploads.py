"""How the server receives an upload (ui.uploads): one copy of its bytes, none on disk.

Runs Starlette's real multipart parser (the one Streamlit's upload route uses) on a real
multipart body, fed in 64 KiB chunks as the network does, then reads the file part as the
route does (``await upload.read()``), measuring Python allocations with tracemalloc.
"""

from __future__ import annotations

import io
import os
import tempfile
import tracemalloc

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from ui.uploads import keep_uploads_in_memory

SIZE = 8 << 20
BOUNDARY = b"----lorarank"


def multipart(payload: bytes) -> list[bytes]:
    """A one-file multipart/form-data body, cut in 64 KiB chunks."""
    head = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; '
            b'filename="adapter_model.safetensors"\r\nContent-Type: application/octet-stream'
            b"\r\n\r\n")
    raw = head + payload + b"\r\n--" + BOUNDARY + b"--\r\n"
    return [raw[i:i + 65536] for i in range(0, len(raw), 65536)]


async def receive_like_streamlit(chunks: list[bytes]) -> tuple[bytes, int]:
    """Parse the body and read the file part as Streamlit's ``_upload_put`` does; returns the
    bytes and the peak of Python allocations above the start (the chunks are the network's)."""
    it = iter(chunks)

    async def receive() -> dict:
        chunk = next(it, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    scope = {"type": "http", "method": "PUT",
             "headers": [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY)]}
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        form = await Request(scope, receive).form()
        (upload,) = form.values()
        assert upload.file._rolled is False  # kept in memory: nothing spooled to disk
        try:
            data = await upload.read()
        finally:
            upload.file.close()
        del form, upload
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return data, peak


def test_an_upload_is_received_with_one_copy(run_async):
    """Peak while receiving is the upload's bytes plus the parser buffer's growth margin
    (1.13x measured); Starlette's own ``read()`` copied the buffer (2.13x)."""
    keep_uploads_in_memory()
    assert MultiPartParser.spool_max_size > SIZE  # the app's upload limit is larger
    payload = os.urandom(SIZE)
    data, peak = run_async(receive_like_streamlit(multipart(payload)))
    assert data == payload
    assert peak < 1.4 * SIZE, peak / SIZE


def test_other_reads_are_starlettes(run_async):
    """Partial reads, reads after a seek and files on disk read as before."""
    keep_uploads_in_memory()

    async def reads(file) -> list[bytes]:
        upload = UploadFile(file=file)
        out = [await upload.read(3)]
        out.append(await upload.read())  # from position 3: not the shared path
        await upload.seek(0)
        out.append(await upload.read())  # the whole buffer, shared
        out.append(await upload.read())  # at its end now
        return out

    expected = [b"abc", b"defgh", b"abcdefgh", b""]
    assert run_async(reads(io.BytesIO(b"abcdefgh"))) == expected
    spooled = tempfile.SpooledTemporaryFile(max_size=1 << 20)
    spooled.write(b"abcdefgh")
    spooled.seek(0)
    assert run_async(reads(spooled)) == expected
    with tempfile.SpooledTemporaryFile(max_size=2) as rolled:
        rolled.write(b"abcdefgh")  # past max_size: on disk
        rolled.seek(0)
        assert run_async(reads(rolled)) == expected


def test_idempotent():
    """Every page run calls it: Starlette's read is wrapped once."""
    keep_uploads_in_memory()
    keep_uploads_in_memory()
    assert UploadFile.read._lorarank_shares
    assert not hasattr(UploadFile.read.__wrapped__, "_lorarank_shares")


def test_uploader_copies_share_the_upload():
    """Streamlit returns ``deepcopy`` of the uploader's files on every run; the copy is an
    independent file on the same bytes (it used to be a second copy of the upload)."""
    import copy

    from streamlit.proto.Common_pb2 import FileURLs
    from streamlit.runtime.uploaded_file_manager import UploadedFile, UploadedFileRec

    keep_uploads_in_memory()
    data = os.urandom(1 << 20)
    original = UploadedFile(UploadedFileRec(file_id="f1", name="adapter_model.safetensors",
                                            type="application/octet-stream", data=data),
                            FileURLs(upload_url="/u", delete_url="/d"))
    original.seek(7)
    (twin,) = copy.deepcopy([original])
    assert twin.getvalue() is data  # no copy of the bytes
    assert (twin.file_id, twin.name, twin.type, twin.size, twin.tell()) == (
        "f1", "adapter_model.safetensors", "application/octet-stream", 1 << 20, 7)
    assert twin._file_urls == original._file_urls and twin._file_urls is not original._file_urls
    twin.seek(0)
    twin.write(b"xy")  # a write unshares the copy's buffer: the original is untouched
    assert original.getvalue() is data and twin.getvalue()[:2] == b"xy"
    assert original.tell() == 7
