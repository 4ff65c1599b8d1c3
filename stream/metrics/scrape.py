"""Reading a process's Prometheus ``/metrics`` page back: the benches, the demo and the tests
scrape a worker this way (one parser: prometheus-client's public text parser).
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

#: (sample name, sorted label pairs) -> value
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, timeout_s: float = 2.0, host: str = "127.0.0.1") -> Samples | None:
    """Every sample on ``http://host:port/metrics``; None when nothing answers there."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout_s) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return parse(text)


def parse(text: str) -> Samples:
    """Samples of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float | None:
    """Sum of the samples called ``name`` whose labels include ``labels``; None when there is none."""
    want = set(labels.items())
    vals = [v for (n, lab), v in samples.items() if n == name and want <= set(lab)]
    return sum(vals) if vals else None


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``{label value: sample value}`` of the samples called ``name``."""
    return {dict(lab)[label]: v for (n, lab), v in samples.items() if n == name and label in dict(lab)}
