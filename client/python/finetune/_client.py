"""Client and Job: the FineTune API (proto/finetune/v1/finetune.proto) for
notebooks, doing what ftctl and client/client.cc do, the same way."""
import hashlib
import os
import secrets
import stat
import struct
import tarfile
import tempfile
import time
from datetime import timezone

import grpc

from finetune import _progress
from finetune._spec import build_spec
from finetune.v1 import finetune_pb2 as pb
from finetune.v1 import finetune_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"
_UNARY_TIMEOUT = 60  # seconds, as client/client.cc
_VALIDATE_TIMEOUT = 15 * 60
_CHUNK_BYTES = 256 * 1024  # common/transfer: under gRPC's 4 MiB message cap
_MAX_RECEIVE_BYTES = 64 << 20
_RECONNECT_FOR = 600  # seconds a watch waits for a lost server
_TERMINAL = {pb.SUCCEEDED, pb.FAILED, pb.CANCELLED}
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class FinetuneError(Exception):
    """A call the server refused or that failed: `code` is the grpc.StatusCode
    (NOT_FOUND, INVALID_ARGUMENT, ...), `message` the server's text."""

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return f"{self.code.name}: {self.message}"


def to_dict(message):
    """A protobuf message as plain Python: the proto's field names, enums as
    their names, int64 as int, Timestamps as UTC datetimes (None when unset),
    every field present except unset oneof members and optionals."""
    out = {}
    for f in message.DESCRIPTOR.fields:
        if f.containing_oneof is not None and not message.HasField(f.name):
            continue
        value = getattr(message, f.name)
        if f.label == f.LABEL_REPEATED:
            out[f.name] = [_plain(f, v) for v in value]
        else:
            out[f.name] = _plain(f, value)
    return out


def _plain(field, value):
    if field.type == field.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.Timestamp":
            return value.ToDatetime(tzinfo=timezone.utc) if value.seconds or value.nanos else None
        return to_dict(value)
    if field.type == field.TYPE_FLOAT:
        return _shortest_float32(value)
    if field.type == field.TYPE_ENUM:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known else value
    return value


def _shortest_float32(value):
    # 0.6, not 0.6000000238418579: the fewest digits that give back the float32.
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if struct.unpack("f", struct.pack("f", short))[0] == value:
            return short
    return value


def _resolve_token(token, token_file):
    """ftctl's order: the token, else the first line of token_file, else $FTCTL_TOKEN."""
    if not token and token_file:
        with open(os.path.expanduser(token_file)) as f:
            token = f.readline().strip()
        if not token:
            raise ValueError(f"token_file {token_file} is empty")
    token = token or os.environ.get("FTCTL_TOKEN", "")
    if any(c <= " " or c > "~" for c in token):
        raise ValueError("the token must be printable ASCII without spaces")
    return token


def _read(path):
    if not path:
        return None
    with open(os.path.expanduser(path), "rb") as f:
        return f.read()


def pack_directory(root, out_path):
    """Writes root's contents to out_path as a tar (pax), as ftctl packs a folder
    (common/datasets/archive.h): paths relative to root, sorted, zero times and
    owners, modes 0644 and 0755, symlinks followed. ValueError naming a broken
    link, a symlink loop or a special file."""
    def add(tar, folder, prefix, open_dirs):
        for name in sorted(os.listdir(folder)):
            path, rel = os.path.join(folder, name), f"{prefix}{name}"
            try:
                st = os.stat(path)
            except OSError as e:
                raise ValueError(f"{path}: broken link or unreadable ({e.strerror})") from None
            info = tarfile.TarInfo(rel)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in open_dirs:
                    raise ValueError(f"{path}: symlink loop")
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
                add(tar, path, rel + "/", open_dirs | {(st.st_dev, st.st_ino)})
            elif stat.S_ISREG(st.st_mode):
                info.size, info.mode = st.st_size, 0o644
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                raise ValueError(f"{path}: not a file or folder (special files cannot be packed)")

    st = os.stat(root)
    with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, root, "", {(st.st_dev, st.st_ino)})


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Download:
    """One file of a model, received in order into "<path>.part" and published
    at path only when its size and sha256 match the first chunk's."""

    def __init__(self, path, size, sha256):
        self.path, self.size, self.sha256 = path, size, sha256
        self.file = open(path + ".part", "wb")
        self.hash = hashlib.sha256()
        self.bytes = 0

    def append(self, offset, data):
        if offset != self.bytes:
            raise FinetuneError(grpc.StatusCode.DATA_LOSS,
                                f"{self.path}: chunk at offset {offset}, expected {self.bytes}")
        self.file.write(data)
        self.hash.update(data)
        self.bytes += len(data)

    def commit(self):
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        digest = self.hash.hexdigest()
        if self.bytes != self.size or digest != self.sha256:
            raise FinetuneError(grpc.StatusCode.DATA_LOSS,
                                f"{self.path} arrived corrupted: {self.bytes} of {self.size} bytes, sha256 {digest}")
        os.replace(self.path + ".part", self.path)

    def discard(self):
        self.file.close()
        if os.path.exists(self.path + ".part"):
            os.remove(self.path + ".part")


class Client:
    """A connection to finetuned. Like ftctl: `address` defaults to
    $FTCTL_SERVER, then 127.0.0.1:50051; the token is sent as
    "authorization: Bearer TOKEN" and comes from `token`, `token_file` (its
    first line) or $FTCTL_TOKEN; `tls_ca` (a PEM file) or `tls=True` (the
    system roots) turn on TLS, `tls_cert`/`tls_key` add a client certificate.
    Every failed call raises FinetuneError."""

    def __init__(self, address=None, *, token=None, token_file=None, tls=False, tls_ca=None, tls_cert=None,
                 tls_key=None, tls_server_name=None):
        self.address = address or os.environ.get("FTCTL_SERVER") or DEFAULT_SERVER
        token = _resolve_token(token, token_file)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._tls = bool(tls or tls_ca or tls_cert)
        options = [("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES)]
        if self._tls:
            if bool(tls_cert) != bool(tls_key):
                raise ValueError("tls_cert and tls_key go together")
            credentials = grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self._channel = grpc.secure_channel(self.address, credentials, options)
        else:
            self._channel = grpc.insecure_channel(self.address, options)
        self._stub = pb_grpc.FineTuneStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _error(self, e):
        code, details = e.code(), e.details() or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            hint = ("check that tls_ca is the CA that signed the server's certificate" if self._tls
                    else "if finetuned serves TLS, pass tls_ca=FILE (its CA) or tls=True")
            details = f"cannot reach finetuned at {self.address}: {details} ({hint})"
        return FinetuneError(code, details)

    def _call(self, method, request, timeout=_UNARY_TIMEOUT):
        try:
            return getattr(self._stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e) from None

    # --- jobs ---------------------------------------------------------------
    def submit(self, *, request_id=None, **spec):
        """Validates and queues a job; keywords are JobSpec fields (dataset_uri or
        dataset, backbone, weights, freeze_depth (an int or "all"), epochs, ...).
        A local dataset path becomes file:///abs/path. A retried call with the
        same request_id returns the first call's job."""
        request = pb.SubmitJobRequest(spec=build_spec(spec), request_id=request_id or f"py-{secrets.token_hex(8)}")
        return Job(self, self._call("SubmitJob", request))

    def validate(self, **spec):
        """A dry run of submit(): the ValidationReport as a dict; nothing is queued."""
        request = pb.SubmitJobRequest(spec=build_spec(spec))
        return to_dict(self._call("ValidateJob", request, timeout=_VALIDATE_TIMEOUT))

    def get_job(self, job_id):
        return Job(self, self._call("GetJob", pb.GetJobRequest(job_id=job_id)))

    def list_jobs(self, limit=100, tenant="", states=()):
        """Newest first; `states` are names ("RUNNING", ...)."""
        request = pb.ListJobsRequest(limit=limit, tenant=tenant, states=[pb.JobState.Value(s) for s in states])
        return [Job(self, j) for j in self._call("ListJobs", request).jobs]

    def cancel(self, job_id):
        return Job(self, self._call("CancelJob", pb.CancelJobRequest(job_id=job_id)))

    def events(self, job_id, from_sequence=1):
        """The job's events as dicts (to_dict of JobEvent: job_id, sequence, time
        and one of state_changed, progress, epoch, log), replayed from
        `from_sequence`, then live; ends after the terminal event."""
        for event in self._watch(job_id, from_sequence):
            yield to_dict(event)

    def _watch(self, job_id, from_sequence):
        # As client/client.cc: once the stream has been up, a lost server is
        # waited for and the watch resumes at the next sequence, so that every
        # event arrives exactly once.
        next_sequence, connected, backoff, lost_at = from_sequence, False, 0.2, None
        while True:
            call = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id, from_sequence=next_sequence),
                                       metadata=self._metadata)
            try:
                for event in call:
                    connected, backoff, lost_at = True, 0.2, None
                    next_sequence = event.sequence + 1
                    yield event
                return
            except grpc.RpcError as e:
                lost_at = lost_at or time.monotonic()
                if not connected or e.code() != grpc.StatusCode.UNAVAILABLE or \
                        time.monotonic() - lost_at > _RECONNECT_FOR:
                    raise self._error(e) from None
            finally:
                call.cancel()
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    # --- models -------------------------------------------------------------
    def list_models(self, tenant=""):
        return [to_dict(m) for m in self._call("ListModels", pb.ListModelsRequest(tenant=tenant)).models]

    def get_model(self, model_id):
        return to_dict(self._call("GetModel", pb.GetModelRequest(model_id=model_id)))

    def delete_model(self, model_id):
        self._call("DeleteModel", pb.DeleteModelRequest(model_id=model_id))

    def download_model(self, model_id, dir):
        """Writes every file the server streams for the model (metadata.json,
        model.pt, the model card README.md, and model.onnx where the model has
        one) into `dir`, created if needed, each checked against its size and
        sha256 (DATA_LOSS otherwise) and renamed into place only then, as
        `ftctl models download` does. Returns the paths written."""
        os.makedirs(dir, exist_ok=True)
        call = self._stub.DownloadModel(pb.DownloadModelRequest(model_id=model_id), metadata=self._metadata)
        files = {}
        try:
            for chunk in call:
                name = chunk.file
                if not name or "/" in name or name.startswith("."):
                    raise FinetuneError(grpc.StatusCode.DATA_LOSS, f"server sent a bad file name '{name}'")
                if name not in files:
                    files[name] = _Download(os.path.join(dir, name), chunk.total_size, chunk.sha256)
                files[name].append(chunk.offset, chunk.data)
            for f in files.values():
                f.commit()
            return [f.path for f in files.values()]
        except grpc.RpcError as e:
            raise self._error(e) from None
        finally:
            call.cancel()
            for f in files.values():
                f.discard()

    def predict(self, model_id, images, top_k=5):
        """Top-k classes of each image (a path or encoded bytes), run on the
        server: one list of {"label", "index", "probability"} per image."""
        data = [i if isinstance(i, bytes) else _read(i) for i in images]
        response = self._call("Predict", pb.PredictRequest(model_id=model_id, images=data, top_k=top_k), 180)
        return [to_dict(p)["top"] for p in response.predictions]

    # --- datasets -----------------------------------------------------------
    def upload_dataset(self, path, *, name, sha256=None, format=None, wait=True):
        """Uploads a folder (packed into a tar first) or a .tar, .tar.gz or .zip
        file as dataset `name`; jobs then use dataset="dataset://NAME". The
        server checks the bytes against `sha256` when given. With `wait`, returns
        once the server has extracted and validated it (READY), and raises its
        reason when that FAILED. Returns the Dataset as a dict."""
        path = os.fspath(path)
        with tempfile.TemporaryDirectory(prefix="finetune-upload-") as tmp:
            if os.path.isdir(path):
                archive = os.path.join(tmp, "dataset.tar")
                pack_directory(path, archive)
            elif os.path.isfile(path):
                archive = path
            else:
                raise FileNotFoundError(f"{path} is not a folder or an archive file")
            header = pb.DatasetUploadHeader(name=name, size_bytes=os.path.getsize(archive),
                                            sha256=sha256 or _sha256_file(archive), format=format or "")

            def requests():
                yield pb.UploadDatasetRequest(header=header)
                with open(archive, "rb") as f:
                    data = f.read(_CHUNK_BYTES)
                    yield pb.UploadDatasetRequest(data=data)  # one, even for 0 bytes
                    for data in iter(lambda: f.read(_CHUNK_BYTES), b""):
                        yield pb.UploadDatasetRequest(data=data)

            dataset = self._call("UploadDataset", requests(), timeout=None)
        poll = 0.05
        while wait and dataset.state == pb.DATASET_EXTRACTING:
            time.sleep(poll)
            poll = min(poll * 2, 1.0)
            dataset = self._call("GetDataset", pb.GetDatasetRequest(name=name))
        if dataset.state == pb.DATASET_FAILED:
            raise FinetuneError(_CODES.get(dataset.error_code, grpc.StatusCode.UNKNOWN), dataset.error)
        return to_dict(dataset)

    def get_dataset(self, name, tenant=""):
        return to_dict(self._call("GetDataset", pb.GetDatasetRequest(name=name, tenant=tenant)))

    def list_datasets(self, tenant=""):
        return [to_dict(d) for d in self._call("ListDatasets", pb.ListDatasetsRequest(tenant=tenant)).datasets]

    def delete_dataset(self, name, tenant=""):
        self._call("DeleteDataset", pb.DeleteDatasetRequest(name=name, tenant=tenant))


class Job:
    """A snapshot of one job, as the server answered; refresh() or wait() for
    a newer one. `proto` is the finetune.v1.Job message itself."""

    def __init__(self, client, proto, history=None):
        self._client = client
        self.proto = proto
        self._history = history

    id = property(lambda self: self.proto.id)
    model_id = property(lambda self: self.proto.model_id)
    error = property(lambda self: self.proto.error)
    attempts = property(lambda self: self.proto.attempts)
    state = property(lambda self: pb.JobState.Name(self.proto.state), doc='"QUEUED", ..., "SUCCEEDED"')
    done = property(lambda self: self.proto.state in _TERMINAL)
    metrics = property(lambda self: to_dict(self.proto.metrics))
    spec = property(lambda self: to_dict(self.proto.spec))

    def to_dict(self):
        return to_dict(self.proto)

    def __repr__(self):
        extra = f", val_accuracy={self.proto.metrics.val_accuracy:.4f}" if self.proto.metrics.epochs_completed else ""
        extra += f", model_id={self.model_id!r}" if self.model_id else ""
        extra += f", error={self.error!r}" if self.error else ""
        return f"Job(id={self.id!r}, state={self.state}{extra})"

    @property
    def history(self):
        """One dict per finished epoch (the EpochSummary fields: epoch,
        train_loss, train_accuracy, val_loss, val_accuracy, learning_rate, ...),
        from the job's epoch events up to this snapshot."""
        if self._history is None:
            last, summaries = self.proto.last_sequence, []
            if last > 0:
                events = self._client._watch(self.id, 1)
                try:
                    for event in events:
                        if event.HasField("epoch"):
                            summaries.append(to_dict(event.epoch))
                        if event.sequence >= last:
                            break
                finally:
                    events.close()  # ends the stream of a job still running
            self._history = _latest_per_epoch(summaries)
        return self._history

    def refresh(self):
        return self._client.get_job(self.id)

    def cancel(self):
        return self._client.cancel(self.id)

    def events(self, from_sequence=1):
        return self._client.events(self.id, from_sequence)

    def wait(self, progress=True):
        """Follows the job's live events until it ends and returns the final Job
        (its state may be FAILED or CANCELLED: check .state and .error). With
        `progress`, shows a tqdm bar (plain lines without tqdm) and each epoch."""
        reporter, summaries = _progress.Reporter(progress), []
        try:
            for event in self._client._watch(self.id, 1):
                if event.HasField("epoch"):
                    summaries.append(to_dict(event.epoch))
                reporter.event(event)
        finally:
            reporter.close()
        job = self._client.get_job(self.id)
        job._history = _latest_per_epoch(summaries)
        if progress:
            print(repr(job), flush=True)
        return job

    def download(self, dir):
        """download_model() of this job's model."""
        if not self.model_id:
            raise ValueError(f"job {self.id} has no model (state {self.state})")
        return self._client.download_model(self.model_id, dir)

    def plot(self):
        """Loss and accuracy per epoch, train and val, and the loss of every
        training step (when the worker recorded it), with matplotlib; returns
        the Figure."""
        try:
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("Job.plot() needs matplotlib: apt install python3-matplotlib "
                              "(or pip install matplotlib)") from None
        history = self.history
        if not history:
            raise ValueError(f"job {self.id} has no finished epoch to plot")
        epochs = [h["epoch"] for h in history]
        steps = all(h.get("step_losses") and h.get("steps") for h in history)
        fig, axes = plt.subplots(1, 3 if steps else 2, figsize=(15 if steps else 10, 4))
        for ax, metric in zip(axes, ("loss", "accuracy")):
            for split in ("train", "val"):
                ax.plot(epochs, [h[f"{split}_{metric}"] for h in history], marker="o", label=split)
            ax.set(title=metric, xlabel="epoch")
            ax.legend()
        if steps:
            # A point stands for steps_per_point steps (the last one of an
            # epoch maybe fewer); x is the last step it stands for.
            xs, ys, offset = [], [], 0
            for h in history:
                per_point = max(1, int(h.get("steps_per_point", 1)))
                for i, loss in enumerate(h["step_losses"]):
                    xs.append(offset + min((i + 1) * per_point, int(h["steps"])))
                    ys.append(loss)
                offset += int(h["steps"])
                axes[2].axvline(offset, color="grey", linestyle=":", linewidth=0.8)
            axes[2].plot(xs, ys, linewidth=1, label="train")
            axes[2].set(title="loss per step", xlabel="step")
        fig.suptitle(f"{self.id} ({self.proto.spec.backbone})")
        fig.tight_layout()
        return fig


def _latest_per_epoch(summaries):
    # A resumed attempt may report an epoch again; the last report stands.
    by_epoch = {s["epoch"]: s for s in summaries}
    return [by_epoch[e] for e in sorted(by_epoch)]
