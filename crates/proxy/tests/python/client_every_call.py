"""The real Python client (slapos.slap, slapos.core 1.26.1) against a master.

Usage: python client_every_call.py MASTER_URL COMPUTER_ID
Drives every call the client has through the master, and checks what the
master stored through the master's own answers. Exits non-zero (with an
assertion message) on the first difference.
"""
import sys
import time

import slapos.slap
from slapos.slap import ResourceNotReady, NotFoundError, ServerError

master_url, computer_id = sys.argv[1:3]
SR = 'http://example.com/software/python-client/software.cfg'

slap = slapos.slap.slap()
slap.initializeConnection(master_url)

# format report, as `slapos node format` sends it
computer = slap.registerComputer(computer_id)
from slapos.util import dumps
computer.updateConfiguration(dumps({
    'reference': computer_id, 'address': '2001:db8::1', 'netmask': 'ffff:ffff:ffff:ffff::',
    'partition_list': [{
        'reference': 'slappart%d' % i,
        'address_list': [{'addr': '10.0.0.%d' % (i + 2), 'netmask': '255.255.255.255'},
                         {'addr': '2001:db8::%d' % (i + 2), 'netmask': 'ffff:ffff:ffff:ffff::'}],
        'tap': {'name': 'slaptap%d' % i},
    } for i in range(3)],
}))
partitions = slap.registerComputer(computer_id).getComputerPartitionList()
assert [p.getId() for p in partitions] == ['slappart0', 'slappart1', 'slappart2'], partitions
assert all(p.getState() == 'destroyed' for p in partitions)

# supply
slap.registerSupply().supply(SR, computer_guid=computer_id)
srs = slap.registerComputer(computer_id).getSoftwareReleaseList()
assert [(s.getURI(), s.getState()) for s in srs] == [(SR, 'available')], srs
sr = srs[0]
sr.building()
sr.available()
sr.error('build failed: <log> & more')

# request
order = slap.registerOpenOrder()
inst = order.request(SR, 'PyInstance', partition_parameter_kw={'n': 3, 'text': 'a&b <c> \xe9'},
                     filter_kw={'computer_guid': computer_id})
pid = inst.getId()
assert inst.getInstanceParameterDict()['n'] == '3'
assert inst.getInstanceParameterDict()['text'] == 'a&b <c> \xe9'
assert inst.getState() == 'started'
guid = inst.getInstanceGuid()
assert guid == '%s-%s' % (computer_id, pid), guid
again = order.request(SR, 'PyInstance', partition_parameter_kw={'n': 3, 'text': 'a&b <c> \xe9'},
                      filter_kw={'computer_guid': computer_id})
assert again.getId() == pid

# the node's view
cp = slap.registerComputerPartition(computer_id, pid)
assert cp.getSoftwareRelease().getURI() == SR
assert cp.getState() == 'started'
params = cp.getInstanceParameterDict()
assert params['instance_title'] == 'PyInstance', params
assert len(params['ip_list']) == 2, params
assert cp.getType() == 'default'

# connection parameters, published by the partition, read by the requester
cp.setConnectionDict({'url': 'http://[2001:db8::2]:8080/', 'secret': 's3cr&t'})
conn = order.request(SR, 'PyInstance', partition_parameter_kw={'n': 3, 'text': 'a&b <c> \xe9'},
                     filter_kw={'computer_guid': computer_id}).getConnectionParameterDict()
assert conn == {'url': 'http://[2001:db8::2]:8080/', 'secret': 's3cr&t'}, conn

# a child from the partition, and a shared instance
child = cp.request(SR, 'default', 'PyChild', partition_parameter_kw={'_': '{"size": 2}'})
child_id = child.getId()
assert child_id != pid
assert slap.registerComputerPartition(computer_id, child_id).getInstanceParameterDict()['root_instance_title'] == 'PyInstance'
shared = order.request(SR, 'PyShared', partition_parameter_kw={'domain': 'example.org'}, shared=True)
host = slap.registerComputerPartition(computer_id, shared.getId())
slaves = host.getInstanceParameterDict()['slave_instance_list']
assert [s['domain'] for s in slaves] == ['example.org'], slaves
host.setConnectionDict({'site-url': 'https://example.org/'}, slave_reference=slaves[0]['slave_reference'])
assert order.request(SR, 'PyShared', partition_parameter_kw={'domain': 'example.org'},
                     shared=True).getConnectionParameterDict() == {'site-url': 'https://example.org/'}

# states and reports
cp.started()
cp.stopped()
cp.error('promise failed')
before = slap.registerComputerPartition(computer_id, pid).getInstanceParameterDict()['timestamp']
time.sleep(0.01)
cp.bang('reprocess please')
after = slap.registerComputerPartition(computer_id, pid).getInstanceParameterDict()['timestamp']
assert before != after, (before, after)
computer.bang('reboot')
computer.reportUsage('<journal/>')
assert cp.getCertificate() == {'certificate': '', 'key': ''}
assert slap.getSoftwareReleaseListFromSoftwareProduct('no-such-product') == []
child_cp = slap.registerComputerPartition(computer_id, child_id)
child_cp.rename('PyRenamedChild')
assert slap.registerComputerPartition(computer_id, child_id).getInstanceParameterDict()['instance_title'] == 'PyRenamedChild'

# stop, then destroy (the node reports the destruction)
order.request(SR, 'PyInstance', partition_parameter_kw={'n': 3, 'text': 'a&b <c> \xe9'},
              filter_kw={'computer_guid': computer_id}, state='stopped')
assert slap.registerComputerPartition(computer_id, pid).getState() == 'stopped'
order.request(SR, 'PyInstance', partition_parameter_kw={}, state='started')
cp.request(SR, 'default', 'PyRenamedChild', state='destroyed')
assert slap.registerComputerPartition(computer_id, child_id).getState() == 'destroyed'
child_cp.destroyed()
assert slap.registerComputerPartition(computer_id, child_id).getState() == 'destroyed'
try:
    slap.registerComputerPartition(computer_id, child_id).getSoftwareRelease()
    raise AssertionError('the destroyed partition still has a software release')
except NotFoundError:
    pass  # freed

# software release removal
slap.registerSupply().supply(SR, computer_guid=computer_id, state='destroyed')
assert slap.registerComputer(computer_id).getSoftwareReleaseList()[0].getState() == 'destroyed'
slap.registerComputer(computer_id).getSoftwareReleaseList()[0].destroyed()
assert slap.registerComputer(computer_id).getSoftwareReleaseList() == []

# errors as the client maps them
try:
    slap.registerComputerPartition(computer_id, 'slappart99').getState()
    raise AssertionError('unknown partition accepted')
except ServerError:
    pass
try:
    order.request(SR, 'NoRoom', filter_kw={'computer_guid': 'NO-SUCH-COMPUTER'})
    raise AssertionError('allocated on an unknown computer')
except NotFoundError:
    pass
print('every call OK')
