// The two mechanisms weighed for the undeclared-input report
// (docs/decisions/0019-undeclared-input-report.md), on the same 200 opens
// of /usr/include headers through a bind mount in a private mount
// namespace, 300 runs each, one forked process per run:
//   none            the opens alone;
//   fanotify        a FAN_OPEN mark on the bind's mount, the events read by
//                   the parent after the run (each event's descriptor
//                   closed after a readlink of its /proc/self/fd link);
//   seccomp-notify  openat answered by a supervisor (SECCOMP_RET_USER_NOTIF,
//                   the path read with process_vm_readv, then
//                   SECCOMP_USER_NOTIF_FLAG_CONTINUE).
// Prints min, median and p90 per run. As root:
//   cc -O2 -o /tmp/open_watchers sandbox/benches/prototypes/open_watchers.c
//   /tmp/open_watchers
#define _GNU_SOURCE
#include <sys/fanotify.h>
#include <linux/seccomp.h>
#include <linux/filter.h>
#include <linux/audit.h>
#include <sys/syscall.h>
#include <sys/prctl.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <sys/mount.h>
#include <sched.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
#include <errno.h>
#include <glob.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
static glob_t g;
static void work(const char*prefix){ // 200 opens
  char p[4096];
  for(size_t i=0;i<200;i++){snprintf(p,sizeof p,"%s%s",prefix,g.gl_pathv[i]);int f=open(p,O_RDONLY|O_CLOEXEC);if(f<0){perror(p);exit(1);}close(f);}
}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
#define RUNS 300
int main(int argc,char**argv){ setvbuf(stdout,NULL,_IONBF,0);
  glob("/usr/include/*.h",0,NULL,&g); glob("/usr/include/linux/*.h",GLOB_APPEND,NULL,&g); if(g.gl_pathc<200){fprintf(stderr,"need 200 headers\n");return 1;}
  // a private mount ns with /usr bound at /mnt/u (stands for the sandbox bind)
  if(unshare(CLONE_NEWNS)<0){perror("unshare");return 1;}
  mount(NULL,"/",NULL,MS_REC|MS_PRIVATE,NULL);
  mkdir("/tmp/corral-open-watchers",0755); // in the private namespace only
  if(mount("/usr","/tmp/corral-open-watchers",NULL,MS_BIND,NULL)<0){perror("bind");return 1;}
  // rewrite paths: /usr/include/x.h -> /tmp/corral-open-watchers/include/x.h
  static char buf[256][512];
  for(int i=0;i<200;i++){snprintf(buf[i],512,"/tmp/corral-open-watchers%s",g.gl_pathv[i]+4);g.gl_pathv[i]=buf[i];}
  double t[RUNS];
  const char*modes[]={"none","fanotify","seccomp-notify"};
  for(int mode=0;mode<3;mode++){
    int fan=-1;
    if(mode==1){fan=fanotify_init(FAN_CLASS_NOTIF|FAN_CLOEXEC|FAN_NONBLOCK,O_RDONLY|O_LARGEFILE|O_CLOEXEC);
      if(fanotify_mark(fan,FAN_MARK_ADD|FAN_MARK_MOUNT,FAN_OPEN,AT_FDCWD,"/tmp/corral-open-watchers")<0){perror("mark");return 1;}}
    double drain=0; long events=0;
    for(int r=0;r<RUNS;r++){
      double s=now();
      pid_t pid=fork();
      if(pid==0){
        if(mode==2){
          int sv[2]; socketpair(AF_UNIX,SOCK_STREAM,0,sv);
          pid_t w=fork();
          if(w==0){
            struct sock_filter f[]={
              BPF_STMT(BPF_LD|BPF_W|BPF_ABS,offsetof(struct seccomp_data,nr)),
              BPF_JUMP(BPF_JMP|BPF_JEQ|BPF_K,__NR_openat,0,1),
              BPF_STMT(BPF_RET|BPF_K,SECCOMP_RET_USER_NOTIF),
              BPF_STMT(BPF_RET|BPF_K,SECCOMP_RET_ALLOW)};
            struct sock_fprog prog={4,f};
            prctl(PR_SET_NO_NEW_PRIVS,1,0,0,0);
            int lfd=syscall(__NR_seccomp,SECCOMP_SET_MODE_FILTER,SECCOMP_FILTER_FLAG_NEW_LISTENER,&prog);
            if(lfd<0){perror("seccomp");_exit(1);}
            char c[CMSG_SPACE(sizeof(int))]; char x='x'; struct iovec io={&x,1};
            struct msghdr mh={0}; mh.msg_iov=&io;mh.msg_iovlen=1;mh.msg_control=c;mh.msg_controllen=sizeof c;
            struct cmsghdr*cm=CMSG_FIRSTHDR(&mh);cm->cmsg_level=SOL_SOCKET;cm->cmsg_type=SCM_RIGHTS;cm->cmsg_len=CMSG_LEN(sizeof(int));memcpy(CMSG_DATA(cm),&lfd,sizeof(int));
            sendmsg(sv[1],&mh,0); close(lfd); read(sv[1],&x,1);
            work("");_exit(0);
          }
          char c[CMSG_SPACE(sizeof(int))]; char x; struct iovec io={&x,1};
          struct msghdr mh={0}; mh.msg_iov=&io;mh.msg_iovlen=1;mh.msg_control=c;mh.msg_controllen=sizeof c;
          recvmsg(sv[0],&mh,0); int lfd; memcpy(&lfd,CMSG_DATA(CMSG_FIRSTHDR(&mh)),sizeof(int)); write(sv[0],"g",1);
          struct seccomp_notif_sizes sz; syscall(__NR_seccomp,SECCOMP_GET_NOTIF_SIZES,0,&sz);
          struct seccomp_notif*req=calloc(1,sz.seccomp_notif); struct seccomp_notif_resp*resp=calloc(1,sz.seccomp_notif_resp);
          for(;;){ struct pollfd pf={lfd,POLLIN,0}; poll(&pf,1,-1); if(pf.revents&POLLHUP)break;
            memset(req,0,sz.seccomp_notif);
            if(ioctl(lfd,SECCOMP_IOCTL_NOTIF_RECV,req)<0){continue;}
            char path[4096]; struct iovec l={path,256},rm={(void*)req->data.args[1],256}; process_vm_readv(req->pid,&l,1,&rm,1,0);
            resp->id=req->id;resp->error=0;resp->val=0;resp->flags=SECCOMP_USER_NOTIF_FLAG_CONTINUE;
            ioctl(lfd,SECCOMP_IOCTL_NOTIF_SEND,resp);
          }
          waitpid(w,NULL,0);_exit(0);
        }
        work("");_exit(0);
      }
      waitpid(pid,NULL,0);
      if(mode==1){double d0=now();char b[65536];ssize_t n;
        while((n=read(fan,b,sizeof b))>0){struct fanotify_event_metadata*m=(void*)b;
          while(FAN_EVENT_OK(m,n)){char l[64],tt[4096];snprintf(l,64,"/proc/self/fd/%d",m->fd);readlink(l,tt,sizeof tt);close(m->fd);events++;m=FAN_EVENT_NEXT(m,n);}}
        drain+=now()-d0;}
      t[r]=now()-s;
    }
    qsort(t,RUNS,sizeof(double),cmp);
    printf("%-15s min %.3f median %.3f ms  p90 %.3f ms",modes[mode],t[0],t[RUNS/2],t[RUNS*9/10]);
    if(mode==1)printf("  (drain %.3f ms/run, %.0f events/run)",drain/RUNS,(double)events/RUNS);
    printf("\n");
  }
  umount("/tmp/corral-open-watchers");
  return 0;
}
