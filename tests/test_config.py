import pytest

from meshnet.config import AgentConfig, load_config, parse_hostport
from meshnet.errors import ConfigError


def test_file_then_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('node = "a"\nbind = "10.0.0.1:8000"\njoin = ["10.0.0.2"]\nencrypt-key = ""\n'
                 'gossip_preset = "fast"\n')
    cfg = load_config(f, {"node": "b", "lb": None})
    assert cfg.node == "b" and cfg.bind == "10.0.0.1" and cfg.bind_port == 8000
    assert cfg.join == ("10.0.0.2",) and cfg.gossip_preset == "fast"


def test_default_gossip_preset_is_swift_and_each_preset_builds(tmp_path):
    from meshnet.cluster import Cluster

    assert AgentConfig().gossip_preset == "swift"
    for preset in ("swift", "lan", "fast"):
        cfg = AgentConfig(gossip_preset=preset, state_dir="")
        c = Cluster(cfg, lambda *_: None)
        assert c.gossip_config.probe_ring == (preset == "swift")
        c._sync_pool.shutdown()


@pytest.mark.parametrize("body,needle", [
    ('node = 5\n', "string"),
    ('join = "x"\n', "join"),
    ('underlay-mtu = "big"\n', "whole number"),
    ('colour = "red"\n', "unknown key"),
    ('lb = "magic"\n', "lb"),
    ('bind = "not-an-ip"\n', "bind"),
    ('node = \n', "config file"),
    ('encrypt-key = "abc"\n', "encrypt key"),
    ('metrics = "127.0.0.1"\n', "ADDR:PORT"),
    ('gossip-preset = "turbo"\n', "gossip-preset"),
])
def test_bad_config_is_one_clear_error(tmp_path, body, needle):
    f = tmp_path / "c.toml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=needle):
        load_config(f, {})


def test_missing_file_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", {})


def test_defaults_and_hostport():
    cfg = AgentConfig(bind="192.0.2.9")
    assert cfg.advertise_addr == "192.0.2.9" and cfg.bind_port == 7946
    assert parse_hostport("[::1]:53", 7, "x") == ("::1", 53)
    assert parse_hostport("10.0.0.1", 7, "x") == ("10.0.0.1", 7)
    with pytest.raises(ConfigError):
        parse_hostport("10.0.0.1:99999", 7, "x")


def test_macvlan_keys(tmp_path):
    from meshnet.config import ConfigError, load_config

    f = tmp_path / "c.toml"
    f.write_text('macvlan-parents = ["lan=eth1", "v=eth0.42"]\nmacvlan-shim = true\n')
    c = load_config(f, {})
    assert c.macvlan_parents_map() == {"lan": "eth1", "v": "eth0.42"} and c.macvlan_shim
    for bad, why in (('["lan"]', "use NET=IFACE"), ('["lan=eth0.9999"]', "1-4094"),
                     ('["bad name=eth0"]', "network name")):
        f.write_text(f"macvlan-parents = {bad}\n")
        with pytest.raises(ConfigError, match=why):
            load_config(f, {})


def test_tombstone_lifetime_reaches_the_tables_and_is_checked(tmp_path):
    from meshnet.cluster import Cluster

    f = tmp_path / "c.toml"
    f.write_text("tombstone-lifetime = 900\n")
    cfg = load_config(f, {})
    assert cfg.tombstone_lifetime == 900
    assert Cluster(cfg, on_change=lambda t, k: None).table_config.reap_interval == 900.0
    assert Cluster(load_config(None, {"node": "a"}), on_change=lambda t, k: None
                   ).table_config.reap_interval == 300.0  # both presets' default
    for bad in ("tombstone-lifetime = 2\n", "tombstone-lifetime = 1.5\n"):
        f.write_text(bad)
        with pytest.raises(ConfigError, match="tombstone"):
            load_config(f, {})
