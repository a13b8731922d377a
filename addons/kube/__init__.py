"""Kubernetes on the wire: requests classified as the apiserver's RequestInfo resolver does
(`request_info`), impersonation headers as the apiserver authorizes them (`impersonation`), the
Pod Security Standards on the pods a body makes (`pod_security`), kubectl's protobuf bodies
(`protobuf`, decoded with the message table `protobuf_schema` builds from Kubernetes' own
`generated.proto` files), and agent kubeconfigs (`kubeconfig`).

Pure: imports nothing from mitmproxy and nothing else of holdgate's.
"""
