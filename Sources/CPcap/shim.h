// libpcap for Swift: capture, offline files, injection and the BPF compiler.
#ifndef PIPESFS_CPCAP_SHIM_H
#define PIPESFS_CPCAP_SHIM_H
#include <pcap/pcap.h>
#include <pcap/bpf.h>
#endif
