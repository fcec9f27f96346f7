/* Force-included into every C file of a wheel build (tools/build_wheels.py
 * passes CPPFLAGS="-include tools/manylinux_compat.h"); never part of a
 * source build, which runs where it was built.
 *
 * glibc 2.34 merged libpthread and libdl into libc and gave their functions a
 * new symbol version, GLIBC_2.34. On a build machine with glibc >= 2.34 the
 * kernel's thread pool (src/_threads.h: pthread_create, pthread_once, ...)
 * therefore links against GLIBC_2.34 and auditwheel must tag the wheel
 * manylinux_2_34. Each line below binds one such function to its original
 * x86-64 version instead, GLIBC_2.2.5, which keeps the tag at manylinux_2_17:
 * glibc >= 2.34 still exports that version from libc as an alias of the very
 * same function (same address), and older glibc exports it from libpthread or
 * libdl, which CPython always has loaded there. Only functions whose 2.2.5
 * version is such an alias are listed; a file that calls none of them is
 * unaffected. auditwheel show checks the result: a new symbol from the merge
 * that raises the tag again belongs here.
 */
#if defined(__x86_64__) && defined(__linux__)
__asm__(".symver pthread_create, pthread_create@GLIBC_2.2.5");
__asm__(".symver pthread_once, pthread_once@GLIBC_2.2.5");
__asm__(".symver pthread_join, pthread_join@GLIBC_2.2.5");
__asm__(".symver pthread_detach, pthread_detach@GLIBC_2.2.5");
__asm__(".symver pthread_key_create, pthread_key_create@GLIBC_2.2.5");
__asm__(".symver pthread_key_delete, pthread_key_delete@GLIBC_2.2.5");
__asm__(".symver pthread_getspecific, pthread_getspecific@GLIBC_2.2.5");
__asm__(".symver pthread_setspecific, pthread_setspecific@GLIBC_2.2.5");
__asm__(".symver pthread_attr_getstacksize, pthread_attr_getstacksize@GLIBC_2.2.5");
__asm__(".symver pthread_attr_setstacksize, pthread_attr_setstacksize@GLIBC_2.2.5");
__asm__(".symver pthread_mutex_trylock, pthread_mutex_trylock@GLIBC_2.2.5");
__asm__(".symver pthread_mutex_timedlock, pthread_mutex_timedlock@GLIBC_2.2.5");
__asm__(".symver pthread_mutexattr_init, pthread_mutexattr_init@GLIBC_2.2.5");
__asm__(".symver pthread_mutexattr_destroy, pthread_mutexattr_destroy@GLIBC_2.2.5");
__asm__(".symver pthread_mutexattr_settype, pthread_mutexattr_settype@GLIBC_2.2.5");
__asm__(".symver pthread_barrier_init, pthread_barrier_init@GLIBC_2.2.5");
__asm__(".symver pthread_barrier_wait, pthread_barrier_wait@GLIBC_2.2.5");
__asm__(".symver pthread_barrier_destroy, pthread_barrier_destroy@GLIBC_2.2.5");
__asm__(".symver pthread_spin_init, pthread_spin_init@GLIBC_2.2.5");
__asm__(".symver pthread_spin_destroy, pthread_spin_destroy@GLIBC_2.2.5");
__asm__(".symver pthread_spin_lock, pthread_spin_lock@GLIBC_2.2.5");
__asm__(".symver pthread_spin_trylock, pthread_spin_trylock@GLIBC_2.2.5");
__asm__(".symver pthread_spin_unlock, pthread_spin_unlock@GLIBC_2.2.5");
__asm__(".symver sem_init, sem_init@GLIBC_2.2.5");
__asm__(".symver sem_destroy, sem_destroy@GLIBC_2.2.5");
__asm__(".symver sem_wait, sem_wait@GLIBC_2.2.5");
__asm__(".symver sem_trywait, sem_trywait@GLIBC_2.2.5");
__asm__(".symver sem_timedwait, sem_timedwait@GLIBC_2.2.5");
__asm__(".symver sem_post, sem_post@GLIBC_2.2.5");
__asm__(".symver sem_getvalue, sem_getvalue@GLIBC_2.2.5");
__asm__(".symver dlopen, dlopen@GLIBC_2.2.5");
__asm__(".symver dlsym, dlsym@GLIBC_2.2.5");
__asm__(".symver dlclose, dlclose@GLIBC_2.2.5");
__asm__(".symver dlerror, dlerror@GLIBC_2.2.5");
__asm__(".symver dladdr, dladdr@GLIBC_2.2.5");
#endif
