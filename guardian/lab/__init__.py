# The network-namespace lab: real sshd, nftables, knock, ssh and nmap between namespaces that the
# tests, the demo and the benchmarks build and always remove. Test infrastructure, not product: the
# daemon never imports it. Modules: netns (the Lab), sshd, probes (nmap, connect, knock), nft
# (reading rulesets and sets), guardian_proc (the daemon as a lab process).
from guardian.lab.guardian_proc import GuardianHandle, GuardianStartError, start_guardian
from guardian.lab.netns import DEFAULT_HOSTS, Lab, LabError, cleanup_stale
from guardian.lab.nft import allow_elements, nft_json, set_elements
from guardian.lab.probes import knock, knock_argv, nmap_port_state, tcp_connect, tcp_connect_result
from guardian.lab.sshd import SshdHandle, ssh_argv, start_sshd, try_ssh

__all__ = [
    "DEFAULT_HOSTS",
    "GuardianHandle",
    "GuardianStartError",
    "Lab",
    "LabError",
    "SshdHandle",
    "allow_elements",
    "cleanup_stale",
    "knock",
    "knock_argv",
    "nft_json",
    "nmap_port_state",
    "set_elements",
    "ssh_argv",
    "start_guardian",
    "start_sshd",
    "tcp_connect",
    "tcp_connect_result",
    "try_ssh",
]
