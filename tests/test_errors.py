"""How a command ends on a storage problem, and that no message shows a password.

* ENOSPC, EACCES, EPERM, EROFS and EDQUOT raised anywhere in a command (also in a Ray task, whose wrapper
  carries the original in ``.cause`` and loses its ``errno`` and file) end with one line
  ``error: FILE: problem`` and exit code 2, not a traceback; any other OSError is still a traceback (a bug).
* The ``user:password@`` of a URL (an alert webhook with credentials) never reaches an error message or a
  log line: bad values echoed by the configuration, YAML errors quoting the file, environment variables,
  errors naming a file, and every log line of a command.
"""

from __future__ import annotations

import errno
import io
import logging
import os

import pytest

from xnh_stream import cli
from xnh_stream.config import ConfigError, ProcessConfig
from xnh_stream.io.nxtomo import InputError
from xnh_stream.quality.alerts import WebhookSink, redact_text, redact_url

PASSWORD = "hunter2"
FILE = "/data/out/work/projections.zarr/0.0.0"


def run_process(tmp_path, capsys, *extra: str) -> tuple[int, str]:
    """``process --local`` in this process (exit code, stderr), on a folder that passes the checks made before
    anything starts (it holds a scan-like file; ``process_scan`` is replaced by the tests)."""
    (tmp_path / "scan").mkdir(exist_ok=True)
    (tmp_path / "scan" / "s_1_.nx").touch()
    code = cli.main(["process", str(tmp_path / "scan"), "--out", str(tmp_path / "out"), "--local", *extra])
    return code, capsys.readouterr().err


def raising(exc: BaseException):
    def process_scan(*args, **kwargs):
        raise exc

    return process_scan


@pytest.mark.parametrize(("code", "words"), [
    (errno.ENOSPC, "no space left on device"), (errno.EACCES, "permission denied"),
    (errno.EPERM, "operation not permitted"), (errno.EROFS, "read-only file system"),
    (errno.EDQUOT, "disk quota exceeded")])
def test_a_storage_error_ends_with_one_line_and_exit_2(tmp_path, capsys, monkeypatch, code, words):
    monkeypatch.setattr("xnh_stream.chain.batch.process_scan", raising(OSError(code, os.strerror(code), FILE)))
    rc, err = run_process(tmp_path, capsys)
    assert rc == 2
    assert err == f"error: {FILE}: {words}\n"


def test_a_storage_error_behind_another_is_found(tmp_path, capsys, monkeypatch):
    """Raised ``from`` the OSError (a library's own error type), and without a file name."""
    def process_scan(*args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("zarr could not write a chunk") from exc

    monkeypatch.setattr("xnh_stream.chain.batch.process_scan", process_scan)
    assert run_process(tmp_path, capsys) == (2, "error: no space left on device\n")


def test_a_storage_error_raised_in_a_ray_task_is_unwrapped(tmp_path, capsys, monkeypatch):
    """Ray raises a task's error as a class derived from RayTaskError and the error's class, without its
    errno and file; the original is its ``.cause``."""
    from ray.exceptions import RayTaskError

    cause = OSError(errno.ENOSPC, "No space left on device", FILE)
    wrapped = RayTaskError("phase_batch", "Traceback (most recent call last): ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, OSError) and wrapped.errno is None  # what a plain `except OSError` would see
    monkeypatch.setattr("xnh_stream.chain.batch.process_scan", raising(wrapped))
    assert run_process(tmp_path, capsys) == (2, f"error: {FILE}: no space left on device\n")


def test_the_ray_executor_raises_a_tasks_oserror_as_itself(ray_local):
    from actors.executor import RayExecutor

    def write(item):
        raise OSError(errno.EROFS, "Read-only file system", f"/ro/{item}")

    with pytest.raises(OSError) as info:
        list(RayExecutor().map(write, [7]))
    assert (info.value.errno, info.value.filename) == (errno.EROFS, "/ro/7")


def test_another_oserror_is_still_a_traceback(tmp_path, capsys, monkeypatch):
    """A missing file in the middle of a command is a bug to report, not a storage problem to explain."""
    monkeypatch.setattr("xnh_stream.chain.batch.process_scan",
                        raising(FileNotFoundError(errno.ENOENT, "No such file or directory", FILE)))
    with pytest.raises(FileNotFoundError):
        run_process(tmp_path, capsys)


# --- credentials --------------------------------------------------------------------------------------------
def test_redact_text_replaces_the_userinfo_of_every_url():
    text = f"a 'ftp://user:{PASSWORD}@host/x', http://u:p@ss@h:9/y?q=a@b and https://am:9093/ok"
    assert redact_text(text) == "a 'ftp://***@host/x', http://***@h:9/y?q=a@b and https://am:9093/ok"
    assert redact_url(f"http://bob:{PASSWORD}@am:bad/x") == "http://***@am:bad/x"  # a URL urlsplit refuses


def test_a_webhook_with_a_password_in_a_config_file_is_not_echoed(tmp_path, capsys):
    cfg = tmp_path / "xnh.yaml"
    cfg.write_text(f"alerts:\n  webhook: ftp://user:{PASSWORD}@host/x\n")
    rc, err = run_process(tmp_path, capsys, "--config", str(cfg))
    assert rc == 2 and "ftp://***@host/x" in err and PASSWORD not in err


def test_a_yaml_error_quoting_the_webhook_line_is_redacted(tmp_path):
    cfg = tmp_path / "xnh.yaml"
    cfg.write_text(f'alerts:\n  webhook: "http://user:{PASSWORD}@host/x\n')  # the quote is never closed
    with pytest.raises(ConfigError) as info:
        ProcessConfig.from_file(cfg)
    assert "http://***@host/x" in str(info.value) and PASSWORD not in str(info.value)


def test_a_bad_webhook_in_the_environment_is_redacted(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XNH_ALERTS_WEBHOOK", f"gopher://u:{PASSWORD}@h/")
    rc, err = run_process(tmp_path, capsys)
    assert rc == 2 and "gopher://***@h/" in err and PASSWORD not in err


def test_the_webhook_sink_refuses_a_url_without_showing_its_password():
    with pytest.raises(ValueError, match=r"ftp://\*\*\*@host/x") as info:
        WebhookSink(f"ftp://user:{PASSWORD}@host/x")
    assert PASSWORD not in str(info.value)


def test_an_input_error_naming_a_url_is_redacted(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("xnh_stream.chain.batch.process_scan",
                        raising(InputError(f"https://user:{PASSWORD}@store/scan.nx", "cannot be read")))
    rc, err = run_process(tmp_path, capsys)
    assert (rc, err) == (2, "error: https://***@store/scan.nx: cannot be read\n")


def test_every_log_line_of_a_command_is_redacted(tmp_path, capsys, monkeypatch):
    """The handlers of the root logger redact what they write once a command ran, whatever logged it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        monkeypatch.setattr("xnh_stream.chain.batch.process_scan",
                            raising(OSError(errno.ENOSPC, "No space left on device", FILE)))
        run_process(tmp_path, capsys)
        logging.getLogger("some.library").error("posting to %s failed", f"http://alice:{PASSWORD}@am:9093/a")
    finally:
        root.removeHandler(handler)
    assert stream.getvalue() == "posting to http://***@am:9093/a failed\n"
