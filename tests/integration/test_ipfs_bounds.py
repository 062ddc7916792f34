"""A storage backend is asked for no more than the file can have: KuboStorage sends `cat` a
`length` of the file's size + 1, GatewayStorage drops the connection past it. A CID taught for
a file whose DAG is a 262 TB expansion of one leaf (four blocks in the node) costs the module
one byte more than the file, and the file comes from the upstream."""

from __future__ import annotations

import os
import re

import pytest
from harness.dists import build_wheel, project_dir, sha256_file
from harness.kubo import repeated_leaf_dag

pytestmark = pytest.mark.synapse


def test_a_dag_longer_than_the_file_is_cut_one_byte_past_it(synapse_factory, upstream, dists_dir, kubo_factory):
    wheel = build_wheel(project_dir(dists_dir, "bounded"), "bounded", "1.0", payload_size=300_000)
    size = wheel.stat().st_size
    dag, cid, dag_size = repeated_leaf_dag(os.urandom(256 * 1024))
    assert dag_size > 10 ** 14
    node = kubo_factory(gateway=True)
    node.stop()
    dag.write_into(node.repo)
    node.start()
    hs = synapse_factory(module_config={
        "upstream_url": upstream.url,
        "storage_providers": [
            {"module": "synapse_pypi.storage.KuboStorage", "config": {"api_url": f"http://127.0.0.1:{node.api_port}"}},
            {"module": "synapse_pypi.storage.GatewayStorage",
             "config": {"gateway_url": f"http://127.0.0.1:{node.gateway_port}"}},
        ],
    })
    token = hs.register_user("admin", admin=True)[1]
    status, _, _ = hs.request("POST", "/_synapse/pypi/v1/known_files", token=token, json_body={
        "project": "bounded", "filename": wheel.name, "sha256": sha256_file(wheel), "cid": cid})
    assert status == 200

    status, _, body = hs.request("GET", f"/simple/bounded/{wheel.name}", timeout=120)
    assert status == 200 and body == wheel.read_bytes()
    log = hs.log_text()
    # Kubo was asked for one byte more than the file, and sent it.
    assert f"cat?arg={cid}&length={size + 1} " in node.log_tail(200)
    assert re.search(rf"kubo at \S+ could not give {cid}: .*more than the {size} bytes expected", log), log[-3000:]
    # The gateway sent the 262 TB file's first bytes until the module hung up one past the size.
    assert re.search(rf"gateway at \S+ could not give {cid}: .*more than the {size} bytes expected", log), log[-3000:]
    assert f"cached bounded/{wheel.name}" in log and "fetched from" not in log
    assert node.rpc("version").status == 200
