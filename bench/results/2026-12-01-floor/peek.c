// What one check of an idle loopback TCP socket costs, three ways, 2M calls each, on one core:
// recv(MSG_PEEK|MSG_DONTWAIT) (the pool's check), poll(2) with a zero timeout, ioctl(FIONREAD).
// gcc -O2 -o peek peek.c && taskset -c 1 ./peek   (2026-12-01, AMD EPYC VM: 414/435, 505/459, 436/447 ns, two runs)
#define _GNU_SOURCE
#include <stdio.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){
 int l=socket(AF_INET,SOCK_STREAM,0);struct sockaddr_in a={0};a.sin_family=AF_INET;a.sin_addr.s_addr=htonl(0x7f000001);
 bind(l,(void*)&a,sizeof a);listen(l,1);socklen_t al=sizeof a;getsockname(l,(void*)&a,&al);
 int c=socket(AF_INET,SOCK_STREAM,0);connect(c,(void*)&a,sizeof a);int s=accept(l,0,0);
 int N=2000000;char b;double t=now();
 for(int i=0;i<N;i++) recv(c,&b,1,MSG_PEEK|MSG_DONTWAIT);
 double t1=now();
 for(int i=0;i<N;i++){struct pollfd p={c,POLLIN|POLLRDHUP,0};poll(&p,1,0);}
 double t2=now();
 for(int i=0;i<N;i++){int n;ioctl(c,FIONREAD,&n);}
 double t3=now();
 printf("peek %.0f ns, poll %.0f ns, fionread %.0f ns\n",(t1-t)/N*1e9,(t2-t1)/N*1e9,(t3-t2)/N*1e9);
 return 0;}
