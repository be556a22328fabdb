# The same equality checks with the capture converted to pcapng (read through libpcap, not the mapped reader).
FORMAT=pcapng exec bash "$(dirname "$0")/02-tcpdump-equal.sh"
