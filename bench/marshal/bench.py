"""Decode + encode throughput of the Python xml_marshaller (the baseline).
Usage: python bench.py SECONDS FILE...  -> one line per file: <file> <documents/s> <MB/s>"""
import sys
import time

from xml_marshaller import xml_marshaller

seconds = float(sys.argv[1])
for path in sys.argv[2:]:
    with open(path) as f:
        doc = f.read().strip().encode()
    assert xml_marshaller.dumps(xml_marshaller.loads(doc)) == doc, path + ': not a fixed point'
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        xml_marshaller.dumps(xml_marshaller.loads(doc))
        count += 1
    elapsed = time.perf_counter() - start
    print('%s %.1f %.2f' % (path, count / elapsed, count / elapsed * len(doc) / 1e6))
