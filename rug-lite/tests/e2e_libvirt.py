"""rug-lite end to end on real Service Instances (bringup.sh MODE=libvirt).

Runs `rug-lite serve` against the rig, by default with mutual TLS to the appliances (a CA made
for the run with `akanda-pki init`; E2E_TLS=0 runs it over plain HTTP instead), then drives
Neutron only, and checks what rug-lite and the appliance do:

  1. a router with a gateway and an interface -> ports, server, config pushed, `configured`,
     and the agent's /v1/status config_hash (read over mutual TLS with a client certificate
     of the run's CA, the server certificate checked against the management address) equals
     the one `rug-lite router show` reports; plain HTTP to the agent is refused;
  2. a tenant host on the internal network gets its DHCP lease from the appliance's dnsmasq,
     pings the router's address, and reaches the host's address on the external network
     through the appliance (the host has no route back to the tenant network: the reply
     proves the SNAT);
  3. a floating IP to the tenant host (an event) -> pushed; the host reaches the tenant host
     through the floating IP (the tenant host's ICMP InEchos counter proves the DNAT); then
     the floating IP removed while a ping runs through it -> pushed, the agent's last apply
     flushed one floating IP's sessions (by conntrack mark, on the image's kernel), and the
     address no longer reaches the tenant host;
  4. the router deleted (events) -> server, then ports, deleted; `router list` empty.

Prerequisites (as root; scripts/rig-test does all of it, in CI too):
  sudo BASE=/var/tmp/akanda-openstack MODE=libvirt ../shared/openstack/bringup.sh
  cargo build -p rug-lite -p akanda-pki; an Akanda image built from this tree, in Glance as
  `akanda-router` (`akanda-image upload FILE`), or as a file (AKANDA_IMAGE, default
  akanda-router.qcow2) that this script uploads
Run:
  source ../shared/openstack/admin-openrc
  /var/tmp/akanda-openstack/venv/bin/python rug-lite/tests/e2e_libvirt.py
"""
import json, os, ssl, subprocess, sys, tempfile, time, urllib.request

import openstack

SHARED = os.environ.get('SHARED', os.path.join(os.path.dirname(__file__), '../../../shared'))
sys.path.insert(0, os.path.join(SHARED, 'openstack'))
import l2wire  # noqa: E402

BASE = os.environ.get('BASE', '/var/tmp/akanda-openstack')
l2wire.BASE = BASE
HERE = os.path.dirname(os.path.abspath(__file__))
RUG = os.environ.get('RUG_LITE', os.path.join(HERE, '../../target/debug/rug-lite'))
PKI = os.environ.get('AKANDA_PKI', os.path.join(HERE, '../../target/debug/akanda-pki'))
TLS = os.environ.get('E2E_TLS', '1') != '0'
IMAGE = os.environ.get('AKANDA_IMAGE', 'akanda-router.qcow2')
T0 = time.time()
c = openstack.connect()
work = tempfile.mkdtemp(prefix='rug-lite-e2e-')
failures = []


def log(msg):
    print(f'[{time.time() - T0:6.1f}s] {msg}', flush=True)


def check(name, ok, detail=''):
    log(f"{'PASS' if ok else 'FAIL'} {name} {detail}")
    if not ok:
        failures.append(name)
    return ok


# rug-lite refuses RUG_LITE_* variables it does not know; the test harness sets some of its own.
RUG_ENV = {k: v for k, v in os.environ.items() if not k.startswith('RUG_LITE_')}


def rug(*args):
    out = subprocess.run([RUG, *args, '--config', conf], capture_output=True, text=True, env=RUG_ENV)
    return json.loads(out.stdout) if out.returncode == 0 else None


def wait(what, pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(2)
    return None


def in_echos(ns):
    out = subprocess.run(['ip', 'netns', 'exec', ns, 'cat', '/proc/net/snmp'],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    names = next(l for l in out if l.startswith('Icmp:')).split()
    values = [l for l in out if l.startswith('Icmp:')][1].split()
    return int(values[names.index('InEchos')])


# ---- topology -------------------------------------------------------------------------------
img = c.image.find_image('akanda-router') or c.image.create_image(
    name='akanda-router', filename=IMAGE, disk_format='qcow2', container_format='bare', wait=True)
c.compute.find_flavor('akanda.si') or c.compute.create_flavor(name='akanda.si', vcpus=1, ram=512, disk=2)
mgt = c.network.create_network(name='e2e-mgt')
# A static IPv6 subnet: what the image configures from the config drive.
c.network.create_subnet(network_id=mgt.id, ip_version=6, cidr='fdca:3ba5:a17a:acda::/64',
                        gateway_ip=None, is_dhcp_enabled=False)
ext = c.network.find_network('ext-net')
net = c.network.create_network(name='e2e-tenant')
sn = c.network.create_subnet(network_id=net.id, ip_version=4, cidr='10.78.0.0/24', gateway_ip='10.78.0.1')
host = l2wire.host_addr(mgt.id)  # rug-lite finds its orchestrator address among these
log(f"host on the management network: {host['addresses']}")

conf = os.path.join(work, 'rug-lite.toml')
pki = os.path.join(work, 'pki')
if TLS:
    subprocess.run([PKI, 'init', '--dir', pki], check=True)
    subprocess.run([PKI, 'issue-client', 'e2e-check', '--dir', pki, '--out', f'{pki}/check'],
                   check=True)
    tls_conf = f'ca_cert = "{pki}/ca.pem"\nca_key = "{pki}/ca.key"'
else:
    tls_conf = 'insecure_http = true'
log(f"mode: {'mutual TLS' if TLS else 'plain HTTP'}")


def agent_status(address):
    if not TLS:
        with urllib.request.urlopen(f"http://[{address}]:5000/v1/status", timeout=5) as r:
            return json.load(r)
    # As rug-lite does: the run's CA, a client certificate from it, and the server
    # certificate must name the address connected to.
    ctx = ssl.create_default_context(cafile=f'{pki}/ca.pem')
    ctx.load_cert_chain(f'{pki}/check.pem', f'{pki}/check.key')
    with urllib.request.urlopen(f"https://[{address}]:5000/v1/status", timeout=5, context=ctx) as r:
        return json.load(r)


with open(conf, 'w') as f:
    f.write(f'''[appliance]
image = "akanda-router"
flavor = "akanda.si"
management_network = "{mgt.id}"
boot_timeout = "300s"
[tls]
{tls_conf}
[resync]
period = "600s"
startup_spread = "1s"
[admin]
socket = "{work}/admin.sock"
''')
serve = subprocess.Popen([RUG, 'serve', '--config', conf], stdout=open(f'{work}/serve.log', 'w'),
                         stderr=subprocess.STDOUT, env=RUG_ENV)
try:
    time.sleep(5)
    if serve.poll() is not None:
        log(f'rug-lite serve exited {serve.returncode}: ' + open(f'{work}/serve.log').read()[-2000:])
        sys.exit(1)
    # ---- 1. create: events only (resync period 600 s) ------------------------------------
    router = c.network.create_router(name='e2e-router', external_gateway_info={'network_id': ext.id})
    c.network.add_interface_to_router(router, subnet_id=sn.id)
    t = time.time()
    st = wait('configured', lambda: (lambda s: s if s and s['state'] == 'configured' else None)(
        rug('router', 'show', router.id, '--json')), 300)
    check('configured', st, f'after {time.time() - t:.0f} s')
    if st:
        agent = agent_status(st['management_address'])
        check('hash', agent['config_hash'] == st['config_hash'], agent['config_hash'][:12])
        if TLS:
            try:
                urllib.request.urlopen(f"http://[{st['management_address']}]:5000/v1/status",
                                       timeout=5)
                check('plain HTTP refused', False)
            except Exception as e:
                check('plain HTTP refused', True, type(e).__name__)

    # ---- 2. a tenant host reaches the router -----------------------------------------------
    th = l2wire.tenant_host('e2et1', net.id)
    # One DHCPv4 exchange, with a script that only records what the appliance's dnsmasq gave.
    hook = os.path.join(work, 'dhcp-hook')
    with open(hook, 'w') as f:
        f.write(f'#!/bin/sh\n[ "$reason" = BOUND ] && env > {work}/bound.env\nexit 0\n')
    os.chmod(hook, 0o755)
    with open(os.path.join(work, 'dhclient.conf'), 'w') as f:
        f.write('timeout 30;\nretry 1;\ninitial-interval 1;\nrequest subnet-mask, routers;\n')
    subprocess.run(['ip', 'netns', 'exec', 'e2et1', 'timeout', '40', 'dhclient', '-4', '-1',
                    '-cf', f'{work}/dhclient.conf', '-sf', hook, '-lf', f'{work}/leases',
                    '-pf', f'{work}/dhclient.pid', 'eth0'], capture_output=True)
    try:
        os.kill(int(open(f'{work}/dhclient.pid').read()), 15)
    except (OSError, ValueError):
        pass
    lease = {}
    if os.path.exists(f'{work}/bound.env'):
        lease = dict(l.split('=', 1) for l in open(f'{work}/bound.env').read().splitlines() if '=' in l)
    want = th['addresses'][0].split('/')[0]
    check('tenant DHCP lease', lease.get('new_ip_address') == want and lease.get('new_routers') == '10.78.0.1',
          f"{lease.get('new_ip_address')} via {lease.get('new_routers')} (port {want})")
    ping = subprocess.run(['ip', 'netns', 'exec', 'e2et1', 'ping', '-c', '3', '-W', '2', '10.78.0.1'],
                          capture_output=True)
    check('tenant pings router', ping.returncode == 0)
    ext_host = l2wire.host_addr(ext.id)['addresses'][0].split('/')[0]
    ping = subprocess.run(['ip', 'netns', 'exec', 'e2et1', 'ping', '-c', '3', '-W', '2', ext_host],
                          capture_output=True)
    check('tenant reaches the outside through the appliance (SNAT)', ping.returncode == 0, ext_host)

    # ---- 3. a floating IP: event, push, DNAT -------------------------------------------------
    before = rug('router', 'show', router.id, '--json')['config_hash']
    port = next(p for p in c.network.ports(network_id=net.id) if p.id == th['port_id'])
    fip = c.network.create_ip(floating_network_id=ext.id, port_id=port.id)
    pushed = wait('fip pushed', lambda: (lambda s: s if s and s['state'] == 'configured'
                                         and s['config_hash'] != before else None)(
        rug('router', 'show', router.id, '--json')), 60)
    check('floating IP pushed', pushed)
    n0 = in_echos('e2et1')
    ping = subprocess.run(['ping', '-c', '3', '-W', '2', fip.floating_ip_address], capture_output=True)
    check('host reaches tenant via floating IP', ping.returncode == 0 and in_echos('e2et1') - n0 >= 3)

    # ---- 3b. the floating IP removed while a session runs through it: pushed, its session
    # ended by a conntrack flush by mark on the image's own kernel (a refused flush would fail
    # the apply, and the new config would never be `configured`) ------------------------------
    before = rug('router', 'show', router.id, '--json')['config_hash']
    pinger = subprocess.Popen(['ping', '-i', '0.2', '-c', '150', fip.floating_ip_address],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    c.network.delete_ip(fip)
    removed = wait('fip removed', lambda: (lambda s: s if s and s['state'] == 'configured'
                                           and s['config_hash'] != before else None)(
        rug('router', 'show', router.id, '--json')), 60)
    check('floating IP removal pushed', removed)
    if removed:
        last = agent_status(removed['management_address']).get('last_apply') or {}
        log(f"last apply: {json.dumps({k: last.get(k) for k in ('result', 'config_hash', 'conntrack_flushed', 'phases_ms')})}")
        if last.get('config_hash') == removed['config_hash']:
            check('its sessions flushed', last.get('result') == 'ok' and last.get('conntrack_flushed') == 1,
                  f"conntrack_flushed {last.get('conntrack_flushed')}")
    pinger.terminate()
    n0 = in_echos('e2et1')
    ping = subprocess.run(['ping', '-c', '2', '-W', '1', fip.floating_ip_address], capture_output=True)
    check('the removed floating IP no longer reaches the tenant', in_echos('e2et1') == n0,
          f'exit {ping.returncode}')

    # ---- 4. delete: server, then ports -------------------------------------------------------
    l2wire.tenant_host_del('e2et1')
    c.network.remove_interface_from_router(router, subnet_id=sn.id)
    c.network.delete_router(router)
    gone = wait('gone', lambda: rug('router', 'list', '--json') == [], 120)
    check('router forgotten', gone is not None)
    left = list(c.compute.servers(tags='rug-lite')) + list(c.network.ports(tags='rug-lite'))
    check('nothing of rug-lite left', not left, str([x.id for x in left]))
finally:
    serve.terminate()
    serve.wait(30)
    for hn in (ext.id, mgt.id):
        try:
            l2wire.host_addr_del(hn)
        except Exception:
            pass
    for n in (net, mgt):
        try:
            c.network.delete_network(n)
        except Exception as e:
            log(f'cleanup: {e}')
    log(f'serve log: {work}/serve.log')

sys.exit(1 if failures else 0)
