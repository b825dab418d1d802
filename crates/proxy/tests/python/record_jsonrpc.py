"""Records the JSON-RPC API of the real Python proxy (slapos.core 1.26.1).

Usage (from the repository root, with the project venv):

    $SLAPOS_VENV/bin/python crates/proxy/tests/python/record_jsonrpc.py \
        $SLAPOS_VENV testdata/jsonrpc-vectors

Starts `slapos proxy start` of the venv on a free loopback port (computer
COMP-1234, a fresh database in a temporary directory), drives it through
every route of `json_rpc.json` and `json_rpc_experimental.json` (successes
and the typical errors: invalid bodies, other methods, unknown computers and
instances) and the calls the Python panel (`static_panel/panel.js`) makes,
and writes one `NNN-<step>.json` per exchange, in the format of
`testdata/slap-vectors` (request and answer as they crossed the wire),
after removing the old ones. The proxy is stopped (by its pid) at the end.
Nothing else is contacted.
"""
import glob
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

VENV, OUT = sys.argv[1:3]
COMPUTER = 'COMP-1234'
SR = 'http://example.com/software/my-software/software.cfg'
SR2 = 'http://example.com/software/other/software.cfg'


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Recorder:
    def __init__(self, port, out):
        self.port, self.out, self.seq = port, out, 0

    def call(self, step, path, body=None, method='POST', content_type='application/json',
             accept='application/json', partition=None, raw=None):
        """One exchange: `body` as JSON (or `raw` bytes as they are)."""
        if raw is None:
            raw = b'' if body is None else json.dumps(body).encode()
        headers = {'Host': '127.0.0.1:%d' % self.port}
        if accept is not None:
            headers['Accept'] = accept
        if content_type is not None:
            headers['Content-Type'] = content_type
        if partition is not None:
            headers['Authorization'] = 'X-SlapPartition computer_id=%s, computer_partition_id=%s' % partition
        headers['Content-Length'] = str(len(raw))
        conn = http.client.HTTPConnection('127.0.0.1', self.port, timeout=30)
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders(raw)
        resp = conn.getresponse()
        answer = resp.read()
        conn.close()
        self.seq += 1
        doc = {
            'seq': self.seq,
            'step': step,
            'server': 'A',
            'request': {
                'method': method, 'path': path, 'query_string': '', 'query': [],
                'headers': headers, 'body': raw.decode('utf-8'),
            },
            'response': {
                'status': resp.status, 'reason': resp.reason,
                'headers': dict(resp.getheaders()), 'body': answer.decode('utf-8'),
            },
        }
        name = os.path.join(self.out, '%03d-%s.json' % (self.seq, step))
        with open(name, 'w') as f:
            json.dump(doc, f, indent=2)
            f.write('\n')
        return resp.status, answer


def scenario(r):
    c = r.call
    guid = lambda title, root='', shared=0: '%s___%s___%d' % (title, root, shared)
    # before anything: the default computer exists, nothing else
    c('compute_node_list-empty', '/slapos.allDocs.WIP.compute_node_list', {})
    c('compute_node_software_installation_list-empty', '/slapos.allDocs.v0.compute_node_software_installation_list', {'computer_guid': COMPUTER})
    c('compute_node_format', '/slapos.put.v0.compute_node_format', {
        'computer_guid': COMPUTER,
        'compute_partition_list': [{
            'partition_id': 'slappart%d' % i,
            'ip_list': [
                {'ip-address': '10.0.0.%d' % (i + 2), 'network-interface': 'slaptap%d' % i, 'netmask': '255.255.255.255'},
                {'ip-address': '2001:db8::%d' % (i + 2), 'network-interface': 'slaptap%d' % i, 'netmask': 'ffff:ffff:ffff:ffff::'},
            ],
        } for i in range(4)],
    })
    c('compute_node_format-second', '/slapos.put.v0.compute_node_format', {
        'computer_guid': 'COMP-2', 'compute_partition_list': [{'partition_id': 'slappart0', 'ip_list': []}],
    })
    c('compute_node_list', '/slapos.allDocs.WIP.compute_node_list', {})
    c('software_installation', '/slapos.post.v0.software_installation', {'computer_guid': COMPUTER, 'software_release_uri': SR})
    c('software_installation-other', '/slapos.post.v0.software_installation', {'computer_guid': COMPUTER, 'software_release_uri': SR2, 'state': 'available'})
    c('compute_node_software_installation_list', '/slapos.allDocs.v0.compute_node_software_installation_list', {'computer_guid': COMPUTER})
    c('error-compute_node_software_installation_list-unknown', '/slapos.allDocs.v0.compute_node_software_installation_list', {'computer_guid': 'COMP-NONE'})
    # instances
    c('software_instance-root', '/slapos.post.v0.software_instance', {
        'title': 'MyInstance', 'software_release_uri': SR, 'software_type': 'default',
        'parameters': {'foo': 'bar', 'n': 3, 'f': 1.5, 'b': True, 'x': None, 'l': [1, 'a']},
        'sla_parameters': {'computer_guid': COMPUTER},
    })
    c('software_instance-root-identical', '/slapos.post.v0.software_instance', {
        'title': 'MyInstance', 'software_release_uri': SR, 'software_type': 'default',
        'parameters': {'foo': 'bar', 'n': 3, 'f': 1.5, 'b': True, 'x': None, 'l': [1, 'a']},
    })
    c('software_instance-child', '/slapos.post.v0.software_instance', {
        'title': 'MyChild', 'software_release_uri': SR, 'software_type': 'child', 'parameters': {'a': 'b'},
    }, partition=(COMPUTER, 'slappart0'))
    c('software_instance-other-root', '/slapos.post.v0.software_instance', {
        'title': 'OtherInstance', 'software_release_uri': SR2, 'software_type': 'default', 'state': 'stopped',
    })
    c('software_instance-shared', '/slapos.post.v0.software_instance', {
        'title': 'MyShared', 'software_release_uri': SR, 'software_type': 'default', 'shared': True,
        'parameters': {'url': 'http://example.com/', 'n': 1},
    })
    c('software_instance-shared-from-partition', '/slapos.post.v0.software_instance', {
        'title': 'ChildShared', 'software_release_uri': SR, 'software_type': 'default', 'shared': True,
        'parameters': {'k': 'v'},
    }, partition=(COMPUTER, 'slappart0'))
    c('software_instance-last-free-partition', '/slapos.post.v0.software_instance', {
        'title': 'LastOne', 'software_release_uri': SR, 'software_type': 'default',
    })
    c('error-software_instance-no-free-partition', '/slapos.post.v0.software_instance', {
        'title': 'TooMany', 'software_release_uri': SR, 'software_type': 'default',
    })
    c('error-software_instance-shared-no-host', '/slapos.post.v0.software_instance', {
        'title': 'NoHost', 'software_release_uri': 'http://example.com/nothing.cfg', 'software_type': 'default', 'shared': True,
    })
    c('error-software_instance-bad-authorization', '/slapos.post.v0.software_instance', {
        'title': 'X', 'software_release_uri': SR, 'software_type': 'default',
    }, partition=(COMPUTER, 'slappart9'))
    c('compute_node_instance_list', '/slapos.allDocs.v0.compute_node_instance_list', {'computer_guid': COMPUTER})
    c('error-compute_node_instance_list-unknown', '/slapos.allDocs.v0.compute_node_instance_list', {'computer_guid': 'COMP-NONE'})
    c('instance_node_instance_list', '/slapos.allDocs.v0.instance_node_instance_list', {'instance_guid': guid('MyInstance')})
    c('instance_node_instance_list-no-shared', '/slapos.allDocs.v0.instance_node_instance_list', {'instance_guid': guid('MyChild', 'MyInstance')})
    c('error-instance_node_instance_list-shared', '/slapos.allDocs.v0.instance_node_instance_list', {'instance_guid': guid('MyShared', '', 1)})
    c('error-instance_node_instance_list-bad-guid', '/slapos.allDocs.v0.instance_node_instance_list', {'instance_guid': 'SOFTINST-1'})
    c('error-instance_node_instance_list-unknown', '/slapos.allDocs.v0.instance_node_instance_list', {'instance_guid': guid('Nothing')})
    # connection parameters
    c('software_instance_connection_parameter-root', '/slapos.put.v0.software_instance_connection_parameter', {
        'instance_guid': guid('MyInstance'), 'connection_parameter_dict': {'url': 'http://[2001:db8::2]:8080/', 'password': 's3cr&t', 'n': 2},
    })
    c('software_instance_connection_parameter-child', '/slapos.put.v0.software_instance_connection_parameter', {
        'instance_guid': guid('MyChild', 'MyInstance'), 'connection_parameter_dict': {'child-url': 'http://child/'},
    })
    c('software_instance_connection_parameter-shared', '/slapos.put.v0.software_instance_connection_parameter', {
        'instance_guid': guid('MyShared', '', 1), 'connection_parameter_dict': {'shared-url': 'https://shared/'},
    })
    c('software_instance_connection_parameter-unknown', '/slapos.put.v0.software_instance_connection_parameter', {
        'instance_guid': guid('Nothing'), 'connection_parameter_dict': {},
    })
    c('error-software_instance_connection_parameter-bad-guid', '/slapos.put.v0.software_instance_connection_parameter', {
        'instance_guid': 'a___b', 'connection_parameter_dict': {},
    })
    c('software_instance-root-read-connection', '/slapos.post.v0.software_instance', {
        'title': 'MyInstance', 'software_release_uri': SR, 'software_type': 'default',
        'parameters': {'foo': 'bar', 'n': 3, 'f': 1.5, 'b': True, 'x': None, 'l': [1, 'a']},
    })
    c('software_instance-shared-read-connection', '/slapos.post.v0.software_instance', {
        'title': 'MyShared', 'software_release_uri': SR, 'software_type': 'default', 'shared': True,
        'parameters': {'url': 'http://example.com/', 'n': 1},
    })
    # reads
    c('get-software_instance-root', '/slapos.get.v0.software_instance', {'instance_guid': guid('MyInstance')})
    c('get-software_instance-child', '/slapos.get.v0.software_instance', {'instance_guid': guid('MyChild', 'MyInstance')})
    c('get-software_instance-shared', '/slapos.get.v0.software_instance', {'instance_guid': guid('MyShared', '', 1)})
    c('get-software_instance-child-shared', '/slapos.get.v0.software_instance', {'instance_guid': guid('ChildShared', 'MyInstance', 1)})
    c('error-get-software_instance-unknown', '/slapos.get.v0.software_instance', {'instance_guid': guid('Nothing')})
    c('error-get-software_instance-unknown-shared', '/slapos.get.v0.software_instance', {'instance_guid': guid('Nothing', '', 1)})
    c('error-get-software_instance-bad-guid', '/slapos.get.v0.software_instance', {'instance_guid': 'a___b___x'})
    c('get-compute_partition', '/slapos.get.v0.compute_partition', {'computer_guid': COMPUTER, 'compute_partition_id': 'slappart1'})
    c('error-get-compute_partition-free', '/slapos.get.v0.compute_partition', {'computer_guid': 'COMP-2', 'compute_partition_id': 'slappart0'})
    c('error-get-compute_partition-unknown', '/slapos.get.v0.compute_partition', {'computer_guid': COMPUTER, 'compute_partition_id': 'slappart9'})
    c('get-instance_tree', '/slapos.get.v0.instance_tree', {'title': 'MyInstance'})
    c('get-instance_tree-shared', '/slapos.get.v0.instance_tree', {'title': 'MyShared'})
    c('error-get-instance_tree-child', '/slapos.get.v0.instance_tree', {'title': 'MyChild'})
    c('error-get-instance_tree-unknown', '/slapos.get.v0.instance_tree', {'title': 'Nothing'})
    c('instance_tree_list', '/slapos.allDocs.v0.instance_tree_list', {})
    c('hateoas_url', '/slapos.get.v0.hateoas_url', {})
    c('compute_node_status', '/slapos.get.v0.compute_node_status', {'computer_guid': COMPUTER})
    c('software_instance_certificate', '/slapos.get.v0.software_instance_certificate', {'instance_guid': guid('MyInstance')})
    c('compute_node_certificate', '/slapos.post.v0.compute_node_certificate', {'computer_guid': COMPUTER})
    c('remove-compute_node_certificate', '/slapos.remove.v0.compute_node_certificate', {'computer_guid': COMPUTER})
    c('compute_node_usage', '/slapos.post.v0.compute_node_usage', {'computer_guid': COMPUTER, 'tioxml': '<journal/>'})
    c('compute_node_bang', '/slapos.put.v0.compute_node_bang', {'computer_guid': COMPUTER, 'message': 'reboot'})
    c('software_instance_error', '/slapos.put.v0.software_instance_error', {'instance_guid': guid('MyInstance'), 'message': 'it failed'})
    c('software_installation_error', '/slapos.put.v0.software_installation_error', {'computer_guid': COMPUTER, 'software_release_uri': SR, 'message': 'build failed'})
    c('software_installation_reported_state-building', '/slapos.put.v0.software_installation_reported_state', {'computer_guid': COMPUTER, 'software_release_uri': SR, 'reported_state': 'building'})
    c('software_installation_reported_state-available', '/slapos.put.v0.software_installation_reported_state', {'computer_guid': COMPUTER, 'software_release_uri': SR, 'reported_state': 'available'})
    c('software_instance_reported_state-started', '/slapos.put.v0.software_instance_reported_state', {'instance_guid': guid('MyInstance'), 'reported_state': 'started'})
    c('software_instance_reported_state-stopped', '/slapos.put.v0.software_instance_reported_state', {'instance_guid': guid('Nothing'), 'reported_state': 'stopped'})
    c('software_instance_bang', '/slapos.put.v0.software_instance_bang', {'instance_guid': guid('MyChild', 'MyInstance'), 'message': 'again'})
    c('software_instance_bang-unknown', '/slapos.put.v0.software_instance_bang', {'instance_guid': guid('Nothing'), 'message': 'again'})
    c('error-software_instance_bang-shared', '/slapos.put.v0.software_instance_bang', {'instance_guid': guid('MyShared', '', 1), 'message': 'again'})
    c('error-software_instance_bang-bad-guid', '/slapos.put.v0.software_instance_bang', {'instance_guid': 'x', 'message': 'again'})
    c('software_instance_title', '/slapos.put.v0.software_instance_title', {'instance_guid': guid('MyChild', 'MyInstance'), 'title': 'MyChildRenamed'})
    c('error-software_instance_title-shared', '/slapos.put.v0.software_instance_title', {'instance_guid': guid('MyShared', '', 1), 'title': 'Other'})
    c('compute_node_instance_list-renamed', '/slapos.allDocs.v0.compute_node_instance_list', {'computer_guid': COMPUTER})
    # the Python panel's calls (static_panel/panel.js: callJsonRpcEntryPoint)
    c('panel-instance_tree_list', '/slapos.allDocs.v0.instance_tree_list', {})
    c('panel-instance_tree', '/slapos.get.v0.instance_tree', {'title': 'MyInstance'})
    c('panel-compute_node_list', '/slapos.allDocs.WIP.compute_node_list', {})
    c('panel-compute_node_software_installation_list', '/slapos.allDocs.v0.compute_node_software_installation_list', {'computer_guid': COMPUTER})
    c('panel-software_instance-update', '/slapos.post.v0.software_instance', {
        'title': 'MyInstance', 'software_release_uri': SR, 'software_type': 'default', 'shared': False,
        'state': 'started', 'parameters': {'foo': 'baz'}, 'sla_parameters': {},
    })
    c('panel-software_instance-request', '/slapos.post.v0.software_instance', {
        'title': 'PanelShared', 'software_release_uri': SR, 'software_type': 'default', 'shared': True,
        'parameters': {'a': '1'},
    })
    # destruction
    c('error-software_instance_reported_state-root-with-child', '/slapos.put.v0.software_instance_reported_state', {'instance_guid': guid('MyInstance'), 'reported_state': 'destroyed'})
    c('software_instance_reported_state-destroyed-child', '/slapos.put.v0.software_instance_reported_state', {'instance_guid': guid('MyChildRenamed', 'MyInstance'), 'reported_state': 'destroyed'})
    c('software_instance_reported_state-destroyed-shared', '/slapos.put.v0.software_instance_reported_state', {'instance_guid': guid('MyShared', '', 1), 'reported_state': 'destroyed'})
    c('error-software_instance_reported_state-unknown', '/slapos.put.v0.software_instance_reported_state', {'instance_guid': guid('Nothing'), 'reported_state': 'destroyed'})
    c('error-software_instance_reported_state-bad-guid', '/slapos.put.v0.software_instance_reported_state', {'instance_guid': 'x', 'reported_state': 'destroyed'})
    c('software_instance_reported_state-destroyed-root', '/slapos.put.v0.software_instance_reported_state', {'instance_guid': guid('MyInstance'), 'reported_state': 'destroyed'})
    c('software_installation-destroyed', '/slapos.post.v0.software_installation', {'computer_guid': COMPUTER, 'software_release_uri': SR2, 'state': 'destroyed'})
    c('software_installation_reported_state-destroyed', '/slapos.put.v0.software_installation_reported_state', {'computer_guid': COMPUTER, 'software_release_uri': SR2, 'reported_state': 'destroyed'})
    c('compute_node_instance_list-final', '/slapos.allDocs.v0.compute_node_instance_list', {'computer_guid': COMPUTER})
    c('compute_node_software_installation_list-final', '/slapos.allDocs.v0.compute_node_software_installation_list', {'computer_guid': COMPUTER})
    c('instance_tree_list-final', '/slapos.allDocs.v0.instance_tree_list', {})
    # invalid bodies (the schema), methods, media types
    c('invalid-missing-required', '/slapos.get.v0.software_instance', {})
    c('invalid-additional-property', '/slapos.get.v0.software_instance', {'instance_guid': 'x', 'extra': 1, 'more': 2})
    c('invalid-required-before-additional', '/slapos.post.v0.software_installation', {'other': 1})
    c('invalid-type', '/slapos.get.v0.software_instance', {'instance_guid': 12})
    c('invalid-type-object', '/slapos.get.v0.software_instance', {'instance_guid': {'a': [1, 2.5, None, True]}})
    c('invalid-type-string-repr', '/slapos.put.v0.software_instance_title', {'instance_guid': 'x', 'title': ["it's", 'a "b"', '\u00e9\n']})
    c('invalid-enum', '/slapos.put.v0.software_instance_reported_state', {'instance_guid': 'x', 'reported_state': 'error'})
    c('invalid-max-length', '/slapos.post.v0.software_instance', {'title': 'T' * 201, 'software_release_uri': SR, 'software_type': 'default'})
    c('invalid-nested-required', '/slapos.put.v0.compute_node_format', {'computer_guid': 'COMP-9', 'compute_partition_list': [{'partition_id': 'p0', 'ip_list': []}, {'ip_list': [{'netmask': 'x'}]}]})
    c('invalid-nested-type', '/slapos.put.v0.compute_node_format', {'computer_guid': 'COMP-9', 'compute_partition_list': [{'partition_id': 'p0', 'ip_list': [{'ip-address': 1}]}]})
    c('invalid-sla-parameter', '/slapos.post.v0.software_instance', {'title': 'T', 'software_release_uri': SR, 'software_type': 'default', 'sla_parameters': {'computer_guid': 1}})
    c('invalid-sla-retention', '/slapos.post.v0.software_instance', {'title': 'T', 'software_release_uri': SR, 'software_type': 'default', 'sla_parameters': {'retention_delay': 'x'}})
    c('invalid-not-an-object', '/slapos.allDocs.v0.instance_tree_list', [1, 'a'])
    c('invalid-null', '/slapos.allDocs.v0.instance_tree_list', raw=b'null')
    c('invalid-empty-object-extra', '/slapos.allDocs.v0.instance_tree_list', {'a': 1})
    c('invalid-order-required-first', '/slapos.put.v0.software_instance_bang', {'instance_guid': 1})
    c('invalid-bool-not-string', '/slapos.get.v0.compute_node_status', {'computer_guid': False})
    c('invalid-float', '/slapos.get.v0.compute_node_status', {'computer_guid': 1.0})
    c('invalid-json', '/slapos.get.v0.compute_node_status', raw=b'{"computer_guid": ')
    c('invalid-empty-body', '/slapos.get.v0.compute_node_status', raw=b'')
    c('invalid-content-type', '/slapos.get.v0.compute_node_status', {'computer_guid': COMPUTER}, content_type='application/x-www-form-urlencoded')
    c('invalid-no-content-type', '/slapos.get.v0.compute_node_status', {'computer_guid': COMPUTER}, content_type=None)
    c('content-type-charset', '/slapos.get.v0.compute_node_status', {'computer_guid': COMPUTER}, content_type='application/json; charset=utf-8')
    c('accept-any', '/slapos.get.v0.compute_node_status', {'computer_guid': COMPUTER}, accept='*/*')
    c('accept-none', '/slapos.get.v0.compute_node_status', {'computer_guid': COMPUTER}, accept=None)
    c('error-accept-html', '/slapos.get.v0.compute_node_status', {'computer_guid': COMPUTER}, accept='text/html')
    c('method-get', '/slapos.get.v0.compute_node_status', method='GET', content_type=None)
    c('method-put', '/slapos.put.v0.software_instance_title', {'instance_guid': 'x', 'title': 'y'}, method='PUT')
    c('method-get-experimental', '/slapos.allDocs.WIP.compute_node_list', method='GET', content_type=None)
    c('unknown-route', '/slapos.get.v0.nothing', {})


def main():
    venv = os.path.abspath(VENV)
    os.makedirs(OUT, exist_ok=True)
    for old in glob.glob(os.path.join(OUT, '[0-9][0-9][0-9]-*.json')):
        os.remove(old)
    tmp = tempfile.mkdtemp()
    port = free_port()
    cfg = os.path.join(tmp, 'slapos.cfg')
    with open(cfg, 'w') as f:
        f.write('[slapos]\ncomputer_id = %s\n\n[slapproxy]\nhost = 127.0.0.1\nport = %d\ndatabase_uri = %s\n'
                % (COMPUTER, port, os.path.join(tmp, 'proxy.db')))
    log = open(os.path.join(tmp, 'proxy.log'), 'w')
    proxy = subprocess.Popen([os.path.join(venv, 'bin/slapos'), 'proxy', 'start', '--cfg', cfg],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(('127.0.0.1', port), timeout=1).close()
                break
            except OSError:
                if proxy.poll() is not None or time.time() > deadline:
                    raise SystemExit('the proxy did not start: ' + open(os.path.join(tmp, 'proxy.log')).read())
                time.sleep(0.1)
        scenario(Recorder(port, OUT))
    finally:
        proxy.kill()
        proxy.wait()
        shutil.rmtree(tmp)


if __name__ == '__main__':
    main()
