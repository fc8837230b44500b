"""proctor's API, generated from proto/proctor/v1/*.proto when the package is built:
proctor_pb2 and proctor_pb2_grpc (service proctor.v1.Proctor), sync_pb2 and sync_pb2_grpc
(service proctor.v1.Sync)."""
