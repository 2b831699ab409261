# shellcheck shell=bash
# Sourced by scripts/bench-pub.sh and scripts/bench-peers.sh: a private nginx on
# loopback for HTTP checks, that every contender of a benchmark checks alike.
#
#   bench_nginx_start DIR PORT   start it, with its prefix, config, pid and logs
#                                under DIR; sets NGINX_PID; fails unless it listens
#                                on 127.0.0.1:PORT within 10 s
#   bench_nginx_stop             stop it (idempotent)
#
# Every path answers 200 "ok". keepalive_timeout 0 makes nginx close each
# connection itself, for every client alike, so TIME_WAIT sockets pile up on the
# server's side and the clients never run short of ephemeral ports.

NGINX_PID=""

bench_nginx_start() { # dir port
    local dir=$1 port=$2 i
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<CONF
daemon off;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_timeout 0;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    server {
        listen 127.0.0.1:$port backlog=4096;
        default_type text/plain;
        location / { return 200 "ok\n"; }
    }
}
CONF
    # In the foreground of a background job, so its pid is ours to kill. -e:
    # nginx opens its error log before reading the config; keep that private too.
    /usr/sbin/nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" &
    NGINX_PID=$!
    for ((i = 0; i < 100; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# SIGTERM is nginx's fast shutdown: the master stops its workers, then exits.
bench_nginx_stop() {
    [[ -n $NGINX_PID ]] || return 0
    kill "$NGINX_PID" 2>/dev/null || true
    wait "$NGINX_PID" 2>/dev/null || true
    NGINX_PID=""
}
