from prometheus_client.parser import text_string_to_metric_families

from meshnet.prometheus import render


def test_exposition_parses_and_groups_families():
    text = render({
        "members": {"alive": 3, "failed": 1},
        "gossip": {"sent.ping": 5, "recv.ack": 4, "drop.bad_crc": 2},
        "tables": {"sent_msgs": 7, "recv_msgs": 6, "dropped": 1, "entries": 9},
        "dns": {"queries_udp": 10, "queries_tcp": 1, "forwarded": 2, "rcodes": {"NOERROR": 9},
                "latency_buckets": [(0.001, 5), (0.01, 3), (float("inf"), 1)],
                "latency_seconds_total": 0.05},
        "reconcile": {"vxlan": {"runs": 3, "errors": 0, "seconds_total": 0.1}},
        "lb_backends": {"web": {"healthy": 2, "unhealthy": 1}},
    })
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    members = {s.labels["state"]: s.value for s in fams["meshnet_members"].samples}
    assert members == {"alive": 3, "suspect": 0, "failed": 1, "left": 0}
    assert sum(s.value for s in fams["meshnet_dns_queries"].samples) == 11
    hist = {s.name: s for s in fams["meshnet_dns_query_duration_seconds"].samples
            if not s.labels}
    assert hist["meshnet_dns_query_duration_seconds_count"].value == 9
    buckets = [s.value for s in fams["meshnet_dns_query_duration_seconds"].samples
               if s.name.endswith("_bucket")]
    assert buckets == [5, 8, 9]
    drops = {s.labels["reason"]: s.value for s in fams["meshnet_gossip_dropped"].samples}
    assert drops == {"bad_crc": 2}
    assert {(s.labels["service"], s.labels["health"]): s.value
            for s in fams["meshnet_lb_backends"].samples} == {("web", "healthy"): 2,
                                                            ("web", "unhealthy"): 1}
