# Sourced by the S3 benchmarks: starts a loopback S3-compatible server and points imgpack at it.
#
#   start_s3_server KIND WORKDIR BUCKET
#
# KIND is `moto` (IMGPACK_MOTO_SERVER, else moto_server on the PATH: in memory) or `s3s-fs`
# (IMGPACK_S3S_FS, else s3s-fs on the PATH: files under WORKDIR/s3root, credentials checked;
# `cargo install s3s-fs@0.14.1 --features binary --locked`). Creates BUCKET, exports the AWS_*
# variables and S3_PORT, and stops the server when the calling shell exits (S3_SERVER_PID).

start_s3_server() {
    local kind=$1 work=$2 bucket=$3
    S3_PORT=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    export AWS_ENDPOINT=http://127.0.0.1:$S3_PORT AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
    export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
    case $kind in
        moto)
            "${IMGPACK_MOTO_SERVER:-moto_server}" -H 127.0.0.1 -p "$S3_PORT" >"$work/s3.log" 2>&1 &
            ;;
        s3s-fs)
            mkdir -p "$work/s3root/$bucket"
            "${IMGPACK_S3S_FS:-s3s-fs}" --host 127.0.0.1 --port "$S3_PORT" \
                --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" \
                "$work/s3root" >"$work/s3.log" 2>&1 &
            ;;
        *) echo "unknown S3 server $kind (moto or s3s-fs)" >&2; return 2 ;;
    esac
    S3_SERVER_PID=$!
    for _ in $(seq 100); do
        s3_request PUT "/$bucket" -o /dev/null && break
        [[ $kind == s3s-fs ]] && s3_request GET "/$bucket?list-type=2" -o /dev/null && break
        sleep 0.1
    done
}

# A signed request (SigV4, which both servers accept) to the server: METHOD PATH [curl args].
s3_request() {
    local method=$1 path=$2; shift 2
    curl -sf -X "$method" --aws-sigv4 "aws:amz:us-east-1:s3" \
        --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" "http://127.0.0.1:$S3_PORT$path"
}
