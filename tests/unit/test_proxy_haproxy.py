"""The proxy's configuration, runtime API commands and answer parsers (pure)."""

from __future__ import annotations

import pytest

from deployer.proxy import haproxy
from deployer.proxy.haproxy import ProxySettings, Slot

# `show servers state app` from HAProxy 2.6: slot a was disabled in the configuration, then
# made ready (admin 0x04 remains), b is disabled (0x01 | 0x04); then a drains (0x04 | 0x08).
SERVERS = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 app 1 a 172.18.0.4 2 4 1 1 12 1 0 0 0 0 0 0 - 8000 - 0 0 - - 0
3 app 2 b 127.0.0.1 0 5 1 1 12 1 0 0 0 0 0 0 - 1 - 0 0 - - 0
"""


def test_config_has_two_slots_the_admin_socket_on_loopback_and_retries_for_the_pause() -> None:
    text = haproxy.render_config(ProxySettings(listen_port=8080, pause_timeout=12))
    assert "stats socket ipv4@127.0.0.1:9999 level admin" in text
    assert "bind :8080" in text
    assert "retries 12" in text and "timeout connect 1s" in text
    assert "    server a 127.0.0.1:1 disabled" in text and "    server b 127.0.0.1:1 disabled" in text
    # writes are never replayed after they reached a backend
    assert "disable-l7-retry unless METH_GET || METH_HEAD || METH_OPTIONS" in text


def test_config_starts_routing_as_the_last_switch_left_it() -> None:
    text = haproxy.render_config(ProxySettings(), {"b": ("172.18.0.9", 8000, "ready")})
    assert "    server b 172.18.0.9:8000\n" in text
    assert "    server a 127.0.0.1:1 disabled" in text


def test_a_short_pause_still_retries_a_refused_connection() -> None:
    assert ProxySettings(pause_timeout=0).retries == 3


def test_runtime_commands() -> None:
    assert haproxy.set_address("b", "172.18.0.9", 8000) == "set server app/b addr 172.18.0.9 port 8000"
    assert haproxy.set_state("a", "drain") == "set server app/a state drain"
    with pytest.raises(ValueError, match="unknown server state"):
        haproxy.set_state("a", "up")
    assert haproxy.show_servers() == "show servers state app"


def test_refusals_are_told_from_answers() -> None:
    address = "set server app/a addr 172.23.0.2 port 8000"
    assert haproxy.refusal(address, "IP changed from '127.0.0.1' to '172.23.0.2', port changed from '1' to '8000' by 'stats socket command'\n") is None
    assert haproxy.refusal(address, "no need to change the addr, port\n") is None
    assert haproxy.refusal("set server app/a state ready", "\n") is None
    assert haproxy.refusal("set server app/c state ready", "No such server.\n") == "No such server."
    assert haproxy.refusal(address, "Invalid addr\n") == "Invalid addr"
    assert haproxy.refusal("show stat", "# pxname,...") is None


def test_cli_argv_passes_the_command_as_an_argument() -> None:
    argv = haproxy.cli_argv("web-proxy", "set server app/a state ready; show stat")
    assert argv[:4] == ["docker", "exec", "web-proxy", "bash"]
    assert argv[-1] == "set server app/a state ready; show stat"
    assert "set server" not in argv[5]  # the script is constant
    several = haproxy.cli_argv("web-proxy", "set server app/a state ready", "set server app/b state drain")
    assert several[-2:] == ["set server app/a state ready", "set server app/b state drain"] and several[5] == argv[5]


def test_answers_of_several_commands_are_split_where_each_ends() -> None:
    end = haproxy.ANSWER_END
    output = f"\n\n{end}\nNo such server.\n\n{end}\n"
    assert haproxy.split_answers(output, 2) == ["\n", "No such server.\n"]
    with pytest.raises(ValueError, match="expected 3 runtime API answers, got 2"):
        haproxy.split_answers(output, 3)


def test_parse_servers() -> None:
    slots = haproxy.parse_servers(SERVERS)
    assert slots == {
        "a": Slot("a", "172.18.0.4", 8000, "ready"),
        "b": Slot("b", "127.0.0.1", 1, "maint"),
    }
    assert slots["b"].empty and not slots["a"].empty
    assert haproxy.free_slot(slots) == "b"
    draining = SERVERS.replace("3 app 1 a 172.18.0.4 2 4 ", "3 app 1 a 172.18.0.4 2 12 ")
    assert haproxy.parse_servers(draining)["a"].state == "drain"


def test_both_slots_serving_is_a_half_done_swap() -> None:
    both = SERVERS.replace("127.0.0.1 0 5 ", "172.18.0.9 2 4 ")
    with pytest.raises(ValueError, match="half-done"):
        haproxy.free_slot(haproxy.parse_servers(both))


def test_parse_servers_refuses_an_error_answer() -> None:
    with pytest.raises(ValueError, match="not a `show servers state` answer"):
        haproxy.parse_servers("Can't find backend.\n")


def test_parse_stat() -> None:
    text = (
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\n"
        "web,FRONTEND,,,1,2,262120,40,0,0,0,0,0,,,,,OPEN\n"
        "app,a,0,0,2,3,,30,0,0,,0,,0,0,0,0,UP\n"
        "app,b,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT\n"
        "app,BACKEND,0,0,2,3,26212,30,0,0,0,0,,0,0,0,0,UP\n"
    )
    stats = haproxy.parse_stat(text)
    assert sorted(stats) == ["a", "b"]
    assert stats["a"].current_sessions == 2 and stats["a"].total_sessions == 30 and stats["a"].status == "UP"
    assert stats["b"].status == "MAINT"
    with pytest.raises(ValueError):
        haproxy.parse_stat("Unknown command.\n")
