"""Kubernetes on the wire: requests classified as the apiserver's RequestInfo resolver does
(`request_info`), kubectl's protobuf bodies (`protobuf`), and agent kubeconfigs (`kubeconfig`).

Pure: imports nothing from mitmproxy and nothing else of holdgate's.
"""
