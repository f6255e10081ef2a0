"""Drive wrk (a C load generator, Debian package ``wrk``) and read its report.

wrk is closed-loop (a fixed number of connections, each sending its next
request when the last answer arrives), which measures capacity: requests per
second at saturation. Open-loop latency measurement belongs to ``loadgen``'s
own generator.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests_per_second: float
    p50_seconds: float
    p99_seconds: float
    requests: int
    errors: int  # socket errors plus non-2xx answers


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua(body: bytes, headers: dict[str, str]) -> str:
    lines = ['wrk.method = "POST"']
    for name, value in {"Content-Type": "application/json", **headers}.items():
        lines.append(f'wrk.headers["{name}"] = "{value}"')
    lines.append("wrk.body = [==[" + body.decode() + "]==]")
    return "\n".join(lines) + "\n"


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"cannot read wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse(output: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    total = re.search(r"([0-9]+) requests in", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if not (rps and total and p50 and p99):
        raise ValueError(f"unexpected wrk output:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) ([0-9]+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    return WrkResult(float(rps.group(1)), _seconds(p50.group(1)), _seconds(p99.group(1)), int(total.group(1)), errors)


def run(
    url: str, body: bytes, duration: float = 8.0, connections: int = 32, headers: dict[str, str] | None = None
) -> WrkResult:
    """POST ``body`` to ``url`` over ``connections`` keep-alive connections for ``duration`` seconds."""
    with tempfile.TemporaryDirectory(prefix="affinity-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_lua(body, headers or {}))
        args = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(script), url]
        done = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse(done.stdout)


def varied_script(models: list[str], input_name: str, width: int, seed: int | None = None) -> str:
    """A wrk Lua script posting a V2 JSON request to a model chosen at random per
    request, with a fixed ``[1, width]`` FP32 input whose first element counts
    the requests and whose second is this script's own number: no two requests
    of one run are alike, and no two runs share a request (no cache hit, nothing
    coalesced; both are integers below 2**24, exact in FP32, so no two requests
    round to the same tensor, which is what the balancer's cache keys). ``seed``
    (drawn fresh unless given) picks that number and the models' sequence: each
    wrk run needs a script of its own, or it replays the one before and the
    cache answers what was asked then."""
    if width < 2:
        raise ValueError("the input needs two elements at least: the count and the run's number")
    if seed is None:
        seed = secrets.randbits(24)
    rest = ",".join([str(seed % (1 << 24))] + [f"{((i * 7919) % 1000) / 1000:.3f}" for i in range(2, width)])
    names = ",".join(f'"{m}"' for m in models)
    return f"""math.randomseed({seed})
local models = {{{names}}}
local head = '{{"inputs":[{{"name":"{input_name}","datatype":"FP32","shape":[1,{width}],"data":['
local tail = ',{rest}]}}]}}'
local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local model = models[math.random(#models)]
  local body = head .. string.format("%d", counter % 16777216) .. tail
  return wrk.format(nil, "/v2/models/" .. model .. "/infer", nil, body)
end
"""


def run_script(base_url: str, script: str, duration: float = 8.0, connections: int = 16) -> WrkResult:
    """Run wrk with a Lua ``script`` that builds each request itself."""
    with tempfile.TemporaryDirectory(prefix="affinity-wrk-") as tmp:
        path = Path(tmp) / "script.lua"
        path.write_text(script)
        args = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "-s", str(path), base_url]
        done = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse(done.stdout)
