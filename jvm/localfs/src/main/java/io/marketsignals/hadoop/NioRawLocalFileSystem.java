package io.marketsignals.hadoop;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.attribute.PosixFilePermissions;

import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.io.nativeio.NativeIO;

/**
 * Hadoop's local file system without a child process per file.
 *
 * <p>Without Hadoop's native library (libhadoop, which Maven Central does not carry), {@link RawLocalFileSystem}
 * runs {@code chmod} in a child process to set the permission of every file and directory it creates, and
 * {@code readlink} in another for every {@link #getFileLinkStatus} (what a {@code FileContext} rename asks of
 * its source and target). Spark's streaming checkpoint (offset and commit logs, each state store's changelog)
 * and Delta's log write their files that way: ~45 ms per small file from a JVM of 1.5 GB, most of a
 * micro-batch's checkpoint time. This class sets permissions with {@code java.nio} and looks for a symbolic
 * link with {@code java.nio}, and leaves everything else, including symbolic links themselves, to Hadoop.
 */
public class NioRawLocalFileSystem extends RawLocalFileSystem {

  @Override
  public void setPermission(Path p, FsPermission permission) throws IOException {
    if (permission.getStickyBit() || NativeIO.isAvailable()) {
      super.setPermission(p, permission); // rwx bits only below; the native library needs no help
      return;
    }
    try {
      // FsPermission prints "rwxr-x---" (nine characters without a sticky bit), which java.nio reads
      Files.setPosixFilePermissions(pathToFile(p).toPath(), PosixFilePermissions.fromString(permission.toString()));
    } catch (NoSuchFileException e) {
      throw new FileNotFoundException("File " + p + " does not exist");
    }
  }

  @Override
  public FileStatus getFileLinkStatus(Path f) throws IOException {
    if (Files.isSymbolicLink(pathToFile(f).toPath())) {
      return super.getFileLinkStatus(f); // a link: Hadoop's own answer, child process and all
    }
    // not a link: Hadoop's readlink finds no target and then answers with the file's status, as here
    return getFileStatus(f);
  }
}
