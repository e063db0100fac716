"""The names AIStore's REST API defines, as data: its query parameters, the values of `what`,
its action names and its `Ais-*` headers.

Taken from AIStore's `api/apc` (query.go: the `Qparam*` and `What*` constants; actmsg.go: the
`Act*` constants; headers.go: the `Hdr*` constants with the `Ais-` prefix) at commit 583e7729
(August 2026). A name here that a route does not carry out is answered 501 (a real AIS request
this node does not support); any other name is a 400 (see api/accepted.py).
"""

from __future__ import annotations

# `Qparam*` (api/apc/query.go), with `cii-apr` (QparamPrimaryCii)
QUERY_PARAMS = frozenset((
    "act-no-xact", "all", "append_handle", "append_type", "apr", "archmime", "archmode",
    "archpath", "archregx", "bck_to", "bsumm_remote", "can", "cii", "cii-apr", "coloc",
    "confirm-fshr", "dntres", "dont_add_remote_bck_md", "dont_head_remote_bck", "etl_args",
    "etl_fqn", "etl_name", "etl_pipeline", "etl_secret", "frc", "gfn", "jobid", "keep_bck_md",
    "latest-ver", "mountpath_label", "namespace", "nft", "object", "object_to", "offset",
    "only_active", "original_url", "owt", "partNumber", "pid", "presence", "props", "provider",
    "prp", "prr", "rbd", "rbs", "readiness", "regex", "set-new-custom", "severity", "skip_vc",
    "sln", "synchronize", "sys", "tcs", "tid", "tise", "transient", "tunc", "u", "uploadId",
    "uploads", "utm", "uuid", "validate-checksum", "vpams", "what", "x", "xht", "xnt", "xwm"
))

# `What*`: the values of the `what` query parameter
WHAT_VALUES = frozenset((
    "backends", "bmd", "cluster_config", "config", "disk", "getxstats", "ic_bundle", "log",
    "metrics", "mountpaths", "node_stats", "node_status", "qryxstats", "remote", "running_all",
    "smap", "smapvote", "snode", "software_version", "status", "status_all", "sysinfo",
    "target_ips", "tls_certificate"
))

# `Act*` (api/apc/actmsg.go), with ActXactStart/ActXactStop (`start`, `stop`)
ACTIONS = frozenset((
    "add-remote-bck", "admin-join-proxy", "admin-join-target", "archive", "attach", "attach-mp",
    "blob-download", "bump-metasync", "check-lock", "cleanup-store", "clear-lcache",
    "close-ec-streams", "copy-bck", "copy-listrange", "create-bck", "create-inventory",
    "decommission", "decommission-node", "delete-listrange", "destroy-bck", "destroy-inventory",
    "detach", "detach-mp", "disable-bend", "disable-mp", "download", "dsort", "ec-encode",
    "ec-get", "ec-put", "ec-resp", "election", "enable-bend", "enable-mp", "etl-bck",
    "etl-inline", "etl-listrange", "evict-listrange", "evict-remote-bck", "fshc-mp",
    "get-batch", "head-bck-with-bprops", "ic-merge-own-tbl", "index-shard", "keepalive-update",
    "list", "load-lom-cache", "lru", "make-n-copies", "move-bck", "mpt-abort", "mpt-complete",
    "mpt-upload", "new-primary", "open-ec-streams", "prefetch-listrange", "primary-force",
    "promote", "put-copies", "rebalance", "rechunk", "recover", "reg-global-xaction",
    "reload-creds", "rename-obj", "rescan-mp", "reset-bprops", "reset-config", "reset-stats",
    "resilver", "revoke-token", "rm-unsafe", "rotate-logs", "self-initiated-removal",
    "self-join-proxy", "self-join-target", "set-bprops", "set-config", "show-inventory",
    "shutdown", "shutdown-node", "start", "start-gfn", "start-maintenance", "stop", "stop-gfn",
    "stop-maintenance", "summary-bck", "summary-shard", "watch-xaction"
))

# `Hdr*` with the `Ais-` prefix (api/apc/headers.go), with HdrUA (`Ais-Node`)
HEADERS = frozenset((
    "Ais-Append-Handle", "Ais-Atime", "Ais-Blob-Chunk", "Ais-Blob-Download",
    "Ais-Blob-Read-Timeout", "Ais-Blob-Threshold", "Ais-Blob-Workers", "Ais-Bucket-Inventory",
    "Ais-Bucket-Props", "Ais-Bucket-Summ", "Ais-Caller-Id", "Ais-Caller-Is-Primary",
    "Ais-Caller-Name", "Ais-Caller-Nonce", "Ais-Caller-Sig", "Ais-Caller-Smap-Ver",
    "Ais-Checksum-Type", "Ais-Checksum-Value", "Ais-Cloud_region", "Ais-Cluster-Uptime",
    "Ais-Compress", "Ais-Custom-Md", "Ais-Direct-Put-Length", "Ais-ETL-Pod-Info", "Ais-Ec",
    "Ais-Endpoint", "Ais-Etl-Retry-Reason", "Ais-Inv-Name", "Ais-Join-Sig", "Ais-Join-Time",
    "Ais-Node", "Ais-Node-Flags", "Ais-Node-Id", "Ais-Node-Uptime", "Ais-Node-Url",
    "Ais-Node-Version", "Ais-Oci-Region", "Ais-Pine", "Ais-Profile", "Ais-Promote-Names-Hash",
    "Ais-Promote-Names-Num", "Ais-Provider", "Ais-Putter-Id", "Ais-Query-Handle",
    "Ais-Ready-Join-Clu", "Ais-Remote-Ais-Alias", "Ais-Remote-Ais-Url", "Ais-Remote-Ais-Uuid",
    "Ais-Remote-Offline", "Ais-S3-Signed-Request-Style", "Ais-Session-Id", "Ais-Version",
    "Ais-Versioning-Enabled", "Ais-Xaction-Id"
))

# The API's endpoints: /v1/<name>/... (api/apc/urlpaths.go; the AuthN server's are its own)
ENDPOINTS = frozenset((
    "buckets", "objects", "ec", "daemon", "metasync", "health", "vote", "s3", "ml", "download",
    "sort", "etl", "cluster", "tokens", "reverse", "ic", "notifs", "objstream", "xactions", "txn",
))
